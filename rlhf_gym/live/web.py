"""The local web labelling page: the preference store's queue in a browser, with keyboard shortcuts.

``rlhf-gym label --web`` (and the ``live-human`` provider with ``ui="web"``) serve a Flask app on 127.0.0.1 only.
Every request is checked before it reaches the store:

* the ``Host`` header must name this server (127.0.0.1 or localhost, and its port), so a page on another site that
  re-points its own name at 127.0.0.1 (DNS rebinding) is refused; a browser's ``Origin`` / ``Sec-Fetch-Site``, when
  sent, must be this server's own;
* a random access token is part of the URL and is checked (``secrets.compare_digest``) on every request, the page
  and its script included; an old token (the server was restarted) gets a page that says where the new address is;
* posts must be ``application/json`` objects of at most :data:`MAX_BODY_BYTES` bytes with exactly the documented
  fields, each of its exact JSON type (``query_id`` an integer in range, numbers finite): anything else is a 4xx
  reply with a one-line ``error``, never a server error.

Endpoints (all need ``?token=…`` or the ``X-Label-Token`` header; a page sends its tab's ``X-Label-Session`` so two
tabs of one labeller are shown different queries):

* ``GET /``: the page; ``GET /static/label.js``: its script,
* ``GET /api/next``: the next pending query (sides shuffled), leased to this tab, and the progress counts
  (``elsewhere``: queries other sessions are being shown),
* ``POST /api/answer``: ``{"query_id", "answer": "a"|"b"|"tie"|"skip"|rating, "swapped", "elapsed_s"}``; a query
  leased to another session is refused with 409,
* ``POST /api/renew`` ``{"query_id"}``: keep the lease on the query on screen; ``POST /api/release`` ``{}``: give
  it back (the tab is closing),
* ``POST /api/undo`` ``{}``: take back this annotator's last answer; that query is shown next.
"""

from __future__ import annotations

import json
import math
import random
import re
import secrets
import socket
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, render_template, request
from werkzeug.exceptions import HTTPException
from werkzeug.serving import BaseWSGIServer, make_server

from rlhf_gym.errors import ConfigError
from rlhf_gym.live.serving import ThreadedPageServer
from rlhf_gym.live.visible import visible
from rlhf_gym.preference_store import (
    AlreadyAnsweredError,
    LeasedElsewhereError,
    PreferenceBackend,
    PreferenceStoreError,
    Query,
    UnknownQueryError,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
TOKEN_HEADER = "X-Label-Token"
SESSION_HEADER = "X-Label-Session"
#: the largest request body accepted (an answer is well under 1 KiB)
MAX_BODY_BYTES = 16 * 1024
#: SQLite's largest row id
MAX_QUERY_ID = 2**63 - 1
#: the longest time an answer may report taking (30 days)
MAX_ELAPSED_S = 30 * 24 * 3600.0
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{8,64}")
_ANSWER_FIELDS = ("query_id", "answer", "swapped", "elapsed_s")

STALE_TOKEN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="referrer" content="no-referrer">
<title>rlhf-gym · label: address out of date</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 44rem; margin: 3rem auto; line-height: 1.5">
<h1>This labelling address is out of date</h1>
<p>The address carries an access token, and this one is not the server's current token: the labelling server was
restarted (each start makes a new token), or the address was copied incompletely.</p>
<p>Open the address the server printed when it started, in the terminal where <code>rlhf-gym label --web</code>
(or the training run) is running: the line <code>labelling page: http://127.0.0.1:PORT/?token=…</code>.
Every answer you already gave is saved.</p>
</body></html>
"""


class _Refused(Exception):
    """A request refused with an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def check_local_host(host: str) -> str:
    """Return ``host`` if it is loopback; otherwise raise :class:`ConfigError` (the page has no login)."""
    if host not in LOCAL_HOSTS:
        raise ConfigError(
            f"the labelling page only listens on this machine ({' or '.join(LOCAL_HOSTS)}), not {host!r}: it has "
            f"no login beyond the token. To label from another machine, forward the port over SSH "
            f"(ssh -L 8765:127.0.0.1:8765 host).")
    return "127.0.0.1" if host == "localhost" else host


def _refuse_constant(name: str) -> Any:
    raise _Refused(400, f"the JSON body contains {name}; numbers must be finite")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(400, f"the JSON body names {key!r} twice")
        out[key] = value
    return out


def _json_body() -> dict[str, Any]:
    """The request's JSON object, strictly: UTF-8, no NaN/Infinity, no repeated keys, at most MAX_BODY_BYTES."""
    if request.mimetype != "application/json":
        raise _Refused(415, f"send the body as application/json (got {request.mimetype or 'no content type'!r})")
    length = request.content_length
    if length is not None and length > MAX_BODY_BYTES:
        raise _Refused(413, f"the body is {length} bytes; the most accepted is {MAX_BODY_BYTES}")
    raw = request.stream.read(MAX_BODY_BYTES + 1)
    if len(raw) > MAX_BODY_BYTES:
        raise _Refused(413, f"the body is over {MAX_BODY_BYTES} bytes")
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except UnicodeDecodeError:
        raise _Refused(400, "the body is not UTF-8 text") from None
    except RecursionError:
        raise _Refused(400, "the JSON body is nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python converts
        raise _Refused(400, f"the body is not valid JSON ({getattr(exc, 'msg', exc)})") from None
    if not isinstance(value, dict):
        raise _Refused(400, f"the JSON body must be an object, got {type(value).__name__}")
    return value


def _only_fields(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    extra = [k for k in body if k not in allowed]
    if extra:
        names = ", ".join(repr(k[:40]) for k in extra[:5])
        raise _Refused(400, f"unknown field(s) {names}; this endpoint takes {', '.join(allowed) or 'no fields'}")


def _query_id(body: dict[str, Any]) -> int:
    if "query_id" not in body:
        raise _Refused(400, "send JSON with query_id (an integer) and answer")
    value = body["query_id"]
    if type(value) is not int or not 1 <= value <= MAX_QUERY_ID:
        raise _Refused(400, f"query_id must be a JSON integer from 1 to {MAX_QUERY_ID}, got {_shown(value)}")
    return value


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 40 else text[:37] + "..."


def create_app(store: PreferenceBackend, *, token: str, annotator: str, kind: str | None = None,
               seed: int | None = None, port: int | None = None) -> Flask:
    """The Flask app serving ``store``'s queue to ``annotator``; every request must carry ``token``.

    ``port``: the port it is served on, checked against the ``Host`` and ``Origin`` headers (``None``: any port
    of 127.0.0.1 or localhost).
    """
    if not token:
        raise ValueError("the labelling page needs a non-empty access token")
    app = Flask("rlhf_gym.live.web", static_folder=str(STATIC_DIR), template_folder=str(STATIC_DIR))
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES + 1  # a longer body reads as over the limit (413)
    rng = random.Random(seed)
    server_id = secrets.token_hex(4)
    origins = {f"http://{h}:{port}" for h in LOCAL_HOSTS} if port is not None else None

    def refused(status: int, message: str) -> Response:
        response = jsonify(error=message)
        response.status_code = status
        return response

    @app.errorhandler(_Refused)
    def _on_refused(exc: _Refused) -> Response:
        return refused(exc.status, str(exc))

    @app.errorhandler(HTTPException)
    def _on_http(exc: HTTPException) -> Response:
        return refused(exc.code or 400, exc.description or exc.name)

    @app.errorhandler(PreferenceStoreError)
    def _on_store(exc: PreferenceStoreError) -> Response:
        return refused(503, str(exc))

    @app.errorhandler(Exception)
    def _on_bug(exc: Exception) -> Response:  # a fault of this code, not of the request: logged, one line back
        app.logger.exception("labelling page error")
        return refused(500, f"internal error ({type(exc).__name__}); every answer already confirmed is saved")

    @app.before_request
    def _check_request() -> Response | None:
        host, _, host_port = request.host.rpartition(":") if ":" in request.host else (request.host, "", "")
        if host not in LOCAL_HOSTS or (port is not None and host_port != str(port)):
            return refused(403, f"this server answers only requests addressed to 127.0.0.1:{port or 'PORT'} (the "
                                f"request named host {request.host[:60]!r}); open the address it printed")
        origin = request.headers.get("Origin")
        if origin is not None and (origin.rpartition(":")[0] not in {f"http://{h}" for h in LOCAL_HOSTS}
                                   or (origins is not None and origin not in origins)):
            return refused(403, f"requests from other sites are refused (Origin {origin[:60]!r})")
        if request.headers.get("Sec-Fetch-Site", "same-origin") not in ("same-origin", "none"):
            return refused(403, "requests from other sites are refused (Sec-Fetch-Site "
                                f"{request.headers['Sec-Fetch-Site'][:30]!r})")
        given = request.args.get("token") or request.headers.get(TOKEN_HEADER) or ""
        if not secrets.compare_digest(given.encode("utf-8", "replace"), token.encode("utf-8")):
            if request.path == "/" and request.method == "GET":
                return Response(STALE_TOKEN_PAGE, status=403, mimetype="text/html")
            return refused(403, "the access token is missing or out of date (the server was restarted?); open the "
                                "address the labelling server printed when it started")
        return None

    def session() -> str:
        tab = request.headers.get(SESSION_HEADER, "api")
        if tab != "api" and not _SESSION_ID.fullmatch(tab):
            raise _Refused(400, f"{SESSION_HEADER} must be 8-64 letters, digits, '-' or '_'")
        return f"web:{server_id}:{tab}"

    def progress(mine_session: str) -> dict[str, Any]:
        stats = store.stats()
        elsewhere = sum(1 for lease in store.leases() if (lease.holder, lease.session) != (annotator, mine_session))
        return {"answered": stats["answered"], "pending": stats["pending"],
                "mine": stats["annotators"].get(annotator, 0), "elsewhere": elsewhere}

    def query_json(query: Query) -> dict[str, Any]:
        out: dict[str, Any] = {"id": query.id, "kind": query.kind, "prompt": query.prompt, "scale": query.scale}
        if query.kind == "compare":
            swapped = rng.random() < 0.5
            sides = [{"key": "a", "text": query.completion_a}, {"key": "b", "text": query.completion_b}]
            out["sides"] = sides[::-1] if swapped else sides
            out["swapped"] = swapped
        else:
            out["completion"] = query.completion_a
        return out

    @app.get("/")
    def page() -> str:
        return render_template("label.html", token=token, annotator=visible(annotator))

    @app.get("/api/next")
    def next_query() -> Any:
        me = session()
        query = store.claim(annotator, session=me, kind=kind)
        return jsonify(query=query_json(query) if query is not None else None, progress=progress(me))

    @app.post("/api/answer")
    def post_answer() -> Any:
        me = session()
        body = _json_body()
        _only_fields(body, _ANSWER_FIELDS)
        query_id = _query_id(body)
        if "answer" not in body:
            raise _Refused(400, "send JSON with query_id and answer")
        answer = body["answer"]
        if not (isinstance(answer, str) and len(answer) <= 16 or _number(answer)):
            raise _Refused(400, f"answer must be 'a', 'b', 'tie', 'skip' or a rating number, got {_shown(answer)}")
        meta: dict[str, Any] = {}
        if "swapped" in body:
            if not isinstance(body["swapped"], bool):
                raise _Refused(400, f"swapped must be true or false, got {_shown(body['swapped'])}")
            meta["swapped"] = body["swapped"]
        if "elapsed_s" in body:
            elapsed = body["elapsed_s"]
            if not _number(elapsed) or not 0 <= elapsed <= MAX_ELAPSED_S:
                raise _Refused(400, f"elapsed_s must be a number of seconds from 0 to {MAX_ELAPSED_S:.0f}, got "
                                    f"{_shown(elapsed)}")
            meta["elapsed_s"] = round(float(elapsed), 3)
        try:
            ans = store.answer(query_id, answer, annotator=annotator, source="web", meta=meta, session=me)
        except (AlreadyAnsweredError, LeasedElsewhereError) as exc:
            return jsonify(error=str(exc), progress=progress(me)), 409
        except UnknownQueryError as exc:
            return jsonify(error=str(exc), progress=progress(me)), 404
        except ValueError as exc:
            raise _Refused(400, str(exc)) from None
        return jsonify(answer={"query_id": ans.query_id, "choice": ans.choice, "label": ans.label},
                       progress=progress(me))

    @app.post("/api/renew")
    def renew() -> Any:
        me = session()
        body = _json_body()
        _only_fields(body, ("query_id",))
        return jsonify(held=store.renew(_query_id(body), annotator, session=me))

    @app.post("/api/release")
    def release() -> Any:
        me = session()
        _only_fields(_json_body(), ())
        return jsonify(released=store.release_session(annotator, me))

    @app.post("/api/undo")
    def undo() -> Any:
        me = session()
        _only_fields(_json_body(), ())
        query = store.undo_last(annotator)
        if query is not None:  # shown next on this tab: give back the one on screen and lease the undone one
            store.release_session(annotator, me)
            store.claim(annotator, session=me, kind=kind, prefer=query.id)
        return jsonify(undone=None if query is None else query.id, progress=progress(me))

    return app


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port``, or :class:`ConfigError` naming the port and how to pick another."""
    if not 0 <= int(port) <= 65535:
        raise ConfigError(f"port {port} is not a TCP port; give --port (port=) a number from 1 to 65535, or 0 for "
                          f"any free port")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise ConfigError(f"cannot serve the labelling page on {host}:{port} ({reason}): pick another port with "
                          f"--port (LiveHuman: port=), or --port 0 for any free one") from None
    return sock


class WebLabelServer(ThreadedPageServer):
    """Serve the labelling page for ``store`` on ``host:port`` (port 0: any free port) in a background thread.

    Raises :class:`ConfigError` when the port is taken (the message names it and the ``--port`` option).

    Example::

        server = WebLabelServer(store, annotator="alice", port=8765).start()
        print(server.url)   # http://127.0.0.1:8765/?token=...
        ...
        server.stop()
    """

    thread_name = "rlhf-gym-label-web"

    def __init__(self, store: PreferenceBackend, *, annotator: str, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, kind: str | None = None):
        self.host = check_local_host(host)
        self.token = token or secrets.token_urlsafe(24)
        sock = _listen(self.host, port)
        try:
            self.port = int(sock.getsockname()[1])
            self.app = create_app(store, token=self.token, annotator=annotator, kind=kind, port=self.port)
            self._server: BaseWSGIServer = make_server(self.host, self.port, self.app, threaded=True,
                                                       fd=sock.fileno())
        finally:
            sock.close()  # the server holds its own duplicate of the socket

