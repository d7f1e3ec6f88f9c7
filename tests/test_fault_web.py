"""Hostile requests to the web labelling API: wrong types, sizes, encodings, content types, forged origins and
hosts, stale tokens, replayed answers and answers to other sessions' leases.

Every variant must get a 4xx reply with a one-line JSON ``error`` (never a 500), and store nothing.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlhf_gym.live.web import MAX_BODY_BYTES, WebLabelServer, create_app
from rlhf_gym.preference_store import PreferenceStore

TOKEN = "test-token-0123456789"
PORT = 8765
BASE = f"http://127.0.0.1:{PORT}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PreferenceStore]:
    with PreferenceStore(tmp_path / "prefs.db") as s:
        s.add_queries([{"prompt": f"q{i}", "completion_a": f"a{i}", "completion_b": f"b{i}"} for i in range(6)])
        s.add_query("rate me", "a text", scale=5)
        yield s


@pytest.fixture
def client(store: PreferenceStore) -> Any:
    app = create_app(store, token=TOKEN, annotator="ann", seed=0, port=PORT)
    return app.test_client()


def _post(client: Any, path: str, raw: bytes | str, *, content_type: str | None = "application/json",
          session: str = "tab-aaaaaaaa", headers: dict[str, str] | None = None) -> Any:
    hdrs = {"X-Label-Token": TOKEN, "X-Label-Session": session, **(headers or {})}
    if content_type is not None:
        hdrs["Content-Type"] = content_type
    return client.post(path, data=raw.encode() if isinstance(raw, str) else raw, headers=hdrs, base_url=BASE)


def _next(client: Any, session: str = "tab-aaaaaaaa", **headers: str) -> Any:
    return client.get("/api/next", headers={"X-Label-Token": TOKEN, "X-Label-Session": session, **headers},
                      base_url=BASE)


def _one_line_error(response: Any) -> str:
    data = response.get_json()
    assert isinstance(data, dict) and isinstance(data.get("error"), str), response.data[:200]
    assert "\n" not in data["error"] and data["error"]
    return data["error"]


# (raw JSON body, expected status, a word the error must contain); {qid} is a query leased to the tab
BAD_ANSWERS: list[tuple[str, int, str]] = [
    ('{{"query_id": 1e30, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": 1.9, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": {qid}.0, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": true, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": false, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": "{qid}", "answer": "a"}}', 400, "integer"),
    ('{{"query_id": null, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": -{qid}, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": 0, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": 9223372036854775808, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": ' + "9" * 5000 + ', "answer": "a"}}', 400, "JSON"),
    ('{{"query_id": [{qid}], "answer": "a"}}', 400, "integer"),
    ('{{"query_id": {{"id": {qid}}}, "answer": "a"}}', 400, "integer"),
    ('{{"query_id": {qid}, "answer": null}}', 400, "answer"),
    ('{{"query_id": {qid}, "answer": true}}', 400, "answer"),
    ('{{"query_id": {qid}, "answer": []}}', 400, "answer"),
    ('{{"query_id": {qid}, "answer": {{}}}}', 400, "answer"),
    ('{{"query_id": {qid}, "answer": NaN}}', 400, "finite"),
    ('{{"query_id": {qid}, "answer": Infinity}}', 400, "finite"),
    ('{{"query_id": {qid}, "answer": 1e400}}', 400, "answer"),
    ('{{"query_id": {qid}, "answer": 1.5}}', 400, "probability"),
    ('{{"query_id": {qid}, "answer": -0.5}}', 400, "probability"),
    ('{{"query_id": {qid}, "answer": "maybe"}}', 400, "not one of"),
    ('{{"query_id": {qid}, "answer": "' + "a" * 5000 + '"}}', 400, "answer"),
    ('{{"query_id": {qid}, "answer": "a\\u001b[2J"}}', 400, "not one of"),
    ('{{"query_id": {qid}, "answer": "\\u202ea"}}', 400, "not one of"),
    ('{{"query_id": {qid}, "answer": "\\ud800"}}', 400, "not one of"),
    ('{{"query_id": {qid}, "answer": "\\uff41"}}', 400, "not one of"),
    ('{{"query_id": {qid}, "answer": "a", "elapsed_s": NaN}}', 400, "finite"),
    ('{{"query_id": {qid}, "answer": "a", "elapsed_s": -Infinity}}', 400, "finite"),
    ('{{"query_id": {qid}, "answer": "a", "elapsed_s": -1}}', 400, "elapsed_s"),
    ('{{"query_id": {qid}, "answer": "a", "elapsed_s": 1e308}}', 400, "elapsed_s"),
    ('{{"query_id": {qid}, "answer": "a", "elapsed_s": "3"}}', 400, "elapsed_s"),
    ('{{"query_id": {qid}, "answer": "a", "elapsed_s": true}}', 400, "elapsed_s"),
    ('{{"query_id": {qid}, "answer": "a", "swapped": "yes"}}', 400, "swapped"),
    ('{{"query_id": {qid}, "answer": "a", "swapped": 1}}', 400, "swapped"),
    ('{{"query_id": {qid}, "answer": "a", "swapped": null}}', 400, "swapped"),
    ('{{"query_id": {qid}, "answer": "a", "annotator": "mallory"}}', 400, "unknown field"),
    ('{{"query_id": {qid}, "answer": "a", "source": "x", "meta": {{}}}}', 400, "unknown field"),
    ('{{"query_id": {qid}}}', 400, "answer"),
    ('{{"answer": "a"}}', 400, "query_id"),
    ("{{}}", 400, "query_id"),
    ('{{"query_id": 1, "query_id": {qid}, "answer": "a"}}', 400, "twice"),
    ("[{qid}, \"a\"]", 400, "object"),
    ('"a"', 400, "object"),
    ("null", 400, "object"),
    ("", 400, "JSON"),
    ("{{", 400, "JSON"),
    ('{{"query_id": {qid}, "answer": "a"', 400, "JSON"),
    ("[" * 20000 + "]" * 20000, 413, "bytes"),
    ("[" * 6000 + "]" * 6000, 400, "nested"),
]


def test_hostile_answer_bodies_get_one_clear_4xx_and_store_nothing(client: Any, store: PreferenceStore) -> None:
    qid = _next(client).get_json()["query"]["id"]
    for template, status, word in BAD_ANSWERS:
        raw = template.format(qid=qid)
        response = _post(client, "/api/answer", raw)
        assert response.status_code == status, (raw[:80], response.status_code, response.data[:200])
        assert word.lower() in _one_line_error(response).lower(), (raw[:80], response.get_json())
    # encodings other than UTF-8 JSON text
    good = json.dumps({"query_id": qid, "answer": "a"})
    for raw in (good.encode("utf-16"), good.encode("utf-32"), b"\xef\xbb\xbf" + good.encode(), b"\xff\xfe\xfd",
                good.encode().replace(b'"a"', b'"\xe9"')):
        response = _post(client, "/api/answer", raw)
        assert response.status_code == 400, raw[:20]
        _one_line_error(response)
    assert store.answers() == []
    assert _post(client, "/api/answer", good).status_code == 200  # the same query, answered properly, is stored
    assert [(a.query_id, a.choice) for a in store.answers()] == [(qid, "a")]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/json-patch+json",
                                          "text/json"])
def test_posts_must_be_json(client: Any, store: PreferenceStore, content_type: str | None) -> None:
    qid = _next(client).get_json()["query"]["id"]
    for path, body in (("/api/answer", {"query_id": qid, "answer": "a"}), ("/api/undo", {}),
                       ("/api/release", {}), ("/api/renew", {"query_id": qid})):
        response = _post(client, path, json.dumps(body), content_type=content_type)
        assert response.status_code == 415 and "application/json" in _one_line_error(response)
    assert store.answers() == [] and len(store.leases()) == 1


@pytest.mark.parametrize(("headers", "word"), [
    ({"Host": "evil.example:8765"}, "host"),
    ({"Host": "127.0.0.1.evil.example:8765"}, "host"),
    ({"Host": "localhost.evil.example"}, "host"),
    ({"Host": "127.0.0.1:9999"}, "host"),
    ({"Host": "127.0.0.1"}, "host"),
    ({"Origin": "http://evil.example"}, "other sites"),
    ({"Origin": "http://127.0.0.1:9999"}, "other sites"),
    ({"Origin": "https://127.0.0.1:8765"}, "other sites"),
    ({"Origin": "null"}, "other sites"),
    ({"Origin": "http://127.0.0.1:8765.evil.example"}, "other sites"),
    ({"Sec-Fetch-Site": "cross-site"}, "other sites"),
    ({"Sec-Fetch-Site": "same-site"}, "other sites"),
    ({"X-Label-Token": ""}, "token"),
    ({"X-Label-Token": TOKEN.upper()}, "token"),
    ({"X-Label-Token": TOKEN + "x"}, "token"),
    ({"X-Label-Token": TOKEN[:-1]}, "token"),
])
def test_forged_hosts_origins_and_tokens_are_refused(client: Any, store: PreferenceStore,
                                                     headers: dict[str, str], word: str) -> None:
    qid = _next(client).get_json()["query"]["id"]
    host = headers.pop("Host", None)
    base = f"http://{host}" if host else BASE
    hdrs = {"X-Label-Token": TOKEN, "Content-Type": "application/json", **headers}
    for method, path, body in (("get", "/api/next", None), ("post", "/api/answer", {"query_id": qid, "answer": "a"}),
                               ("post", "/api/undo", {}), ("get", "/static/label.js", None)):
        kwargs: dict[str, Any] = {"headers": hdrs, "base_url": base}
        if body is not None:
            kwargs["data"] = json.dumps(body)
        response = getattr(client, method)(path, **kwargs)
        assert response.status_code == 403, (method, path, response.status_code)
        assert word in _one_line_error(response).lower()
    assert store.answers() == []
    ok = client.get("/api/next", headers={"X-Label-Token": TOKEN, "Origin": "http://localhost:8765",
                                          "Sec-Fetch-Site": "same-origin"}, base_url="http://localhost:8765")
    assert ok.status_code == 200


def test_an_old_address_explains_how_to_get_the_new_one(client: Any) -> None:
    for url in ("/?token=from-before-the-restart", "/"):
        response = client.get(url, base_url=BASE)
        page = response.get_data(as_text=True)
        assert response.status_code == 403 and response.mimetype == "text/html"
        assert "out of date" in page and "labelling page: http://127.0.0.1:PORT/?token=" in page
        assert "saved" in page and "from-before-the-restart" not in page
    response = client.get(f"/?token={TOKEN}", base_url=BASE)
    assert response.status_code == 200 and "Which answer is better?" in response.get_data(as_text=True)


def test_two_tabs_get_different_queries_and_cannot_answer_each_others(client: Any, store: PreferenceStore,
                                                                      tmp_path: Path) -> None:
    first = _next(client, "tab-one-11111111").get_json()["query"]["id"]
    second = _next(client, "tab-two-22222222").get_json()["query"]["id"]
    assert first != second
    assert _next(client, "tab-one-11111111").get_json()["query"]["id"] == first  # a reload: the same query
    assert _next(client, "tab-one-11111111").get_json()["progress"]["elsewhere"] == 1
    # tab two answering (or replaying an answer to) tab one's query: refused, nothing stored
    response = _post(client, "/api/answer", json.dumps({"query_id": first, "answer": "a"}), session="tab-two-22222222")
    assert response.status_code == 409 and "other labelling session" in _one_line_error(response)
    assert store.answers() == []
    # another annotator's page on the same store: refused too
    other = create_app(store, token="other-token-000000", annotator="bob", port=PORT).test_client()
    response = other.post("/api/answer", data=json.dumps({"query_id": second, "answer": "b"}), base_url=BASE,
                          headers={"X-Label-Token": "other-token-000000", "Content-Type": "application/json"})
    assert response.status_code == 409 and "'ann'" in _one_line_error(response)
    # the holders answer their own; a replay of either is refused and changes nothing
    for tab, qid in (("tab-one-11111111", first), ("tab-two-22222222", second)):
        body = json.dumps({"query_id": qid, "answer": "b", "swapped": True, "elapsed_s": 2.5})
        assert _post(client, "/api/answer", body, session=tab).status_code == 200
        replay = _post(client, "/api/answer", body, session=tab)
        assert replay.status_code == 409 and "already answered" in _one_line_error(replay)
    assert sorted((a.query_id, a.choice, a.meta["elapsed_s"]) for a in store.answers()) == [
        (first, "b", 2.5), (second, "b", 2.5)]
    # a closing tab gives its query back at once
    third = _next(client, "tab-one-11111111").get_json()["query"]["id"]
    assert _post(client, "/api/release", "{}", session="tab-one-11111111").get_json() == {"released": 1}
    assert _next(client, "tab-two-22222222").get_json()["query"]["id"] == third
    # undo brings the undone query back to the tab that asked
    undone = _post(client, "/api/undo", "{}", session="tab-one-11111111").get_json()["undone"]
    assert undone == second
    assert _next(client, "tab-one-11111111").get_json()["query"]["id"] == second
    for bad in ("short", "x" * 65, "tab one 1234", "tab/../..", "tab\u202e12345678"):
        response = client.get("/api/next", headers={"X-Label-Token": TOKEN, "X-Label-Session": bad}, base_url=BASE)
        assert response.status_code == 400 and "X-Label-Session" in _one_line_error(response)


def test_a_renewed_lease_keeps_a_slow_answer_and_an_expired_free_one_is_accepted(store: PreferenceStore) -> None:
    qid = store.claim("ann", session="slow", lease_s=0.05).id  # type: ignore[union-attr]
    assert store.renew(qid, "ann", session="slow", lease_s=60)
    assert store.claim("ann", session="fast") is not None and store.claim("ann", session="fast").id != qid
    store.release_session("ann", "fast")
    # an expired lease nobody took: the slow answer is still accepted
    qid2 = store.claim("bob", session="b1", lease_s=0.01).id  # type: ignore[union-attr]
    import time

    time.sleep(0.03)
    assert store.answer(qid2, "a", annotator="bob", source="t", session="b1").choice == "a"
    assert store.answer(qid, "b", annotator="ann", source="t", session="slow").choice == "b"


def _raw_request(port: int, head: str, body: bytes = b"") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        sock.shutdown(socket.SHUT_WR)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


def test_huge_bodies_are_refused_before_they_are_read(store: PreferenceStore) -> None:
    server = WebLabelServer(store, annotator="ann", port=0, token=TOKEN).start()
    try:
        head = (f"POST /api/answer HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nX-Label-Token: {TOKEN}\r\n"
                "Content-Type: application/json\r\n")
        # a 200 MB promise, a few bytes sent: refused from the header alone
        status, data = _raw_request(server.port, head + "Content-Length: 200000000\r\n\r\n", b'{"query_id": 1')
        assert status == 413 and b"200000000 bytes" in data
        # chunked, no length: refused once the limit is passed
        chunk = b'{"query_id": 1, "answer": "' + b"a" * (MAX_BODY_BYTES * 2) + b'"}'
        body = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n0\r\n\r\n"
        status, data = _raw_request(server.port, head + "Transfer-Encoding: chunked\r\n\r\n", body)
        assert status == 413, data
        # the server still answers, and nothing was stored
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        conn.request("GET", "/api/next", headers={"X-Label-Token": TOKEN})
        assert conn.getresponse().status == 200
        assert store.answers() == []
    finally:
        server.stop()


def test_a_port_in_use_is_one_error_line_naming_the_port_and_the_option(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from rlhf_gym.live.cli import main as label_main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert label_main(["--store", str(tmp_path / "p.db"), "--web", "--port", str(port)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and f"127.0.0.1:{port}" in err and "--port" in err
    for bad in ("-1", "70000"):
        assert label_main(["--store", str(tmp_path / "p.db"), "--web", "--port", bad]) == 2
        assert "not a TCP port" in capsys.readouterr().err
