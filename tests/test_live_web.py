"""The local web labelling page: token checks on every request, JSON endpoints, and a real headless browser."""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlhf_gym.errors import ConfigError
from rlhf_gym.live.web import WebLabelServer
from rlhf_gym.preference_store import PreferenceStore

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[PreferenceStore, WebLabelServer]]:
    store = PreferenceStore(tmp_path / "prefs.db")
    store.add_queries([{"prompt": f"question {i}", "completion_a": f"alpha{i}", "completion_b": f"omega{i}"}
                       for i in range(4)], requested_by="test")
    store.add_query("rate this", "a completion to rate", scale=5, requested_by="test")
    server = WebLabelServer(store, annotator="web-ann", port=0).start()
    yield store, server
    server.stop()
    store.close()


def _request(url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json", **(headers or {})},
                                 method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
            status = resp.status
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode("utf-8", "replace")


def test_every_request_without_the_right_token_is_refused(served: tuple[PreferenceStore, WebLabelServer]) -> None:
    store, server = served
    base = f"http://127.0.0.1:{server.port}"
    for path in ("/", "/api/next", "/static/label.js", "/static/label.html", "/nowhere"):
        assert _request(base + path)[0] == 403
        assert _request(base + path + "?token=wrong")[0] == 403
    assert _request(base + "/api/answer", {"query_id": 1, "answer": "a"})[0] == 403
    assert _request(base + "/api/undo", {})[0] == 403
    assert store.stats()["answered"] == 0
    status, page = _request(server.url)
    assert status == 200 and "Which answer is better?" in page and "web-ann" in page
    assert _request(f"{base}/static/label.js?token={server.token}")[0] == 200
    assert _request(f"{base}/api/next", headers={"X-Label-Token": server.token})[0] == 200


def test_json_endpoints_store_answers_and_refuse_bad_ones(served: tuple[PreferenceStore, WebLabelServer]) -> None:
    store, server = served
    base = f"http://127.0.0.1:{server.port}"
    auth = {"X-Label-Token": server.token}
    status, data = _request(base + "/api/next", headers=auth)
    query = data["query"]
    assert status == 200 and query["prompt"] == "question 0"
    assert {s["text"] for s in query["sides"]} == {"alpha0", "omega0"}
    assert data["progress"] == {"answered": 0, "pending": 5, "mine": 0, "elsewhere": 0}
    status, data = _request(base + "/api/answer", {"query_id": query["id"], "answer": "b", "swapped": True}, auth)
    assert status == 200 and data["answer"]["label"] == 0.0
    assert _request(base + "/api/answer", {"query_id": query["id"], "answer": "a"}, auth)[0] == 409
    assert _request(base + "/api/answer", {"query_id": 999, "answer": "a"}, auth)[0] == 404
    status, data = _request(base + "/api/answer", {"query_id": query["id"] + 1, "answer": "maybe"}, auth)
    assert status == 400 and "not one of" in data["error"]
    assert _request(base + "/api/answer", {"answer": "a"}, auth)[0] == 400
    (ans,) = store.answers()
    assert (ans.choice, ans.annotator, ans.source, ans.meta["swapped"]) == ("b", "web-ann", "web", True)
    status, data = _request(base + "/api/undo", {}, auth)
    assert data["undone"] == query["id"] and store.answers() == []


def test_two_pages_on_one_store_are_never_shown_the_same_query(served: tuple[PreferenceStore, WebLabelServer]) -> None:
    store, first = served
    second = WebLabelServer(store, annotator="other-ann", port=0).start()
    try:
        def next_id(server: WebLabelServer) -> int:
            status, data = _request(f"http://127.0.0.1:{server.port}/api/next", headers={"X-Label-Token": server.token})
            assert status == 200
            return data["query"]["id"]

        mine, theirs = next_id(first), next_id(second)
        assert mine != theirs
        assert next_id(first) == mine  # asking again (a reload) shows the same query, not a third one
        status, data = _request(f"http://127.0.0.1:{first.port}/api/next", headers={"X-Label-Token": first.token})
        assert data["progress"]["elsewhere"] == 1
        # once answered, the other page moves on and never gets the first page's query
        _request(f"http://127.0.0.1:{second.port}/api/answer", {"query_id": theirs, "answer": "a"},
                 {"X-Label-Token": second.token})
        seen = set()
        for _ in range(3):
            qid = next_id(second)
            seen.add(qid)
            _request(f"http://127.0.0.1:{second.port}/api/answer", {"query_id": qid, "answer": "s"},
                     {"X-Label-Token": second.token})
        assert mine not in seen and theirs not in seen
    finally:
        second.stop()


def test_the_page_only_listens_on_this_machine(tmp_path: Path) -> None:
    with PreferenceStore(tmp_path / "p.db") as store, pytest.raises(ConfigError, match="only listens on this machine"):
        WebLabelServer(store, annotator="x", host="0.0.0.0")


def _browser(tmp_path: Path) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
                f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


@pytest.mark.browser
@pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_headless_browser_labels_by_click_and_keyboard(served: tuple[PreferenceStore, WebLabelServer],
                                                       tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store, server = served
    driver = _browser(tmp_path)
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(server.url)
        body = driver.find_element(By.TAG_NAME, "body")

        def current() -> tuple[str | None, str, str]:
            """(query id, prompt, text on the left) of the question on screen."""
            return (body.get_attribute("data-query-id"), driver.find_element(By.ID, "prompt").text,
                    driver.find_element(By.CSS_SELECTOR, "#side-left .text").text)

        def then_next(action: Any) -> tuple[str | None, str, str]:
            """Do ``action`` and wait until another question is on screen."""
            before = body.get_attribute("data-query-id")
            action()
            wait.until(lambda d: body.get_attribute("data-query-id") not in ("", None, before))
            return current()

        def left_means(left_text: str) -> str:
            return "a" if left_text.startswith("alpha") else "b"

        expected: dict[str, str] = {}
        wait.until(lambda d: body.get_attribute("data-query-id") not in ("", None))
        _, prompt, left = current()
        _, prompt2, left2 = then_next(driver.find_element(By.ID, "btn-left").click)  # click: left is better
        expected[prompt] = left_means(left)
        _, prompt3, _ = then_next(lambda: body.send_keys("b"))  # keyboard: right is better
        expected[prompt2] = "b" if left_means(left2) == "a" else "a"
        skipped_id, prompt4, _ = then_next(lambda: body.send_keys("t"))
        expected[prompt3] = "tie"
        _, rating_prompt, _ = then_next(driver.find_element(By.ID, "btn-skip").click)
        assert rating_prompt == "rate this"
        undone_id, prompt, left = then_next(lambda: body.send_keys("u"))  # undo the skip: that pair comes back
        assert (undone_id, prompt) == (skipped_id, prompt4)
        assert "undone" in driver.find_element(By.ID, "status").text
        _, prompt, _ = then_next(lambda: body.send_keys("a"))
        expected[prompt4] = left_means(left)
        assert prompt == "rate this"
        body.send_keys("4")
        wait.until(lambda d: d.find_element(By.ID, "empty").is_displayed())
        assert "5 answered by you" in driver.find_element(By.ID, "progress").text
    finally:
        driver.quit()
    stored = {store.get(a.query_id).prompt: (a.choice, a.label, a.source, a.annotator) for a in store.answers()}
    assert {p: c for p, (c, *_) in stored.items()} == {**expected, "rate this": "rating"}
    assert stored["rate this"][1] == 4.0
    assert {(s, a) for _, _, s, a in stored.values()} == {("web", "web-ann")}
    assert store.stats()["skip"] == 0


@pytest.mark.browser
@pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
                    reason="needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
def test_headless_browser_shows_escapes_names_the_key_and_survives_a_dead_server(tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    store = PreferenceStore(tmp_path / "prefs.db")
    pair = store.add_query("clear \x1b[2J\x1b]0;title\x07 me", "alpha \u202eevil", "omega\u200b text")
    store.add_query("rate this", "a completion to rate", scale=5)
    server = WebLabelServer(store, annotator="web-ann", port=0).start()
    driver = _browser(tmp_path)
    try:
        wait = WebDriverWait(driver, 20)
        driver.get(server.url)
        body = driver.find_element(By.TAG_NAME, "body")
        wait.until(lambda d: body.get_attribute("data-query-id") == str(pair))
        assert driver.find_element(By.ID, "prompt").text == "clear \\x1b[2J\\x1b]0;title\\x07 me"
        assert len(driver.find_elements(By.CSS_SELECTOR, "#prompt .ctl")) == 3
        left = driver.find_element(By.CSS_SELECTOR, "#side-left .text").text
        assert left in ("alpha \\u202eevil", "omega\\u200b text")
        body.send_keys("a")  # left is better, whichever stored side it is
        wait.until(lambda d: body.get_attribute("data-query-id") != str(pair))
        assert f"saved: query {pair} → you pressed a (left is better)" in driver.find_element(By.ID, "status").text
        assert store.answers()[0].choice == ("a" if left.startswith("alpha") else "b")
        # a rating: its own heading, the best end named
        assert driver.find_element(By.ID, "heading").text == "How good is this answer? 1 = worst, 5 = best"
        assert driver.find_element(By.ID, "btn-rate-5").text == "5 (best)"
        port, old_url = server.port, server.url
        server.stop()  # the server dies with the rating on screen
        body.send_keys("4")
        wait.until(lambda d: "not reachable" in d.find_element(By.ID, "status").text)
        assert "NOT saved" in driver.find_element(By.ID, "status").text
        server = WebLabelServer(store, annotator="web-ann", port=port).start()  # restarted: a new token
        driver.get(old_url)
        assert "out of date" in driver.find_element(By.TAG_NAME, "h1").text
        assert "labelling page: http://127.0.0.1:PORT/?token=" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()
        server.stop()
    assert len(store.answers()) == 1
    store.close()
