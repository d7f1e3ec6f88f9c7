"""The local web labelling page: the preference store's queue in a browser, with keyboard shortcuts.

``rlhf-gym label --web`` (and the ``live-human`` provider with ``ui="web"``) serve a Flask app on 127.0.0.1 only.
A random access token is part of the URL and is checked (``secrets.compare_digest``) on every request, the page
and its script included; anything without it gets 403. The page reads the next pending query from a JSON
endpoint and posts each answer back; the store commits it before the reply is sent.

Endpoints (all need ``?token=…`` or the ``X-Label-Token`` header):

* ``GET /``: the page; ``GET /static/label.js``: its script,
* ``GET /api/next``: the next pending query (sides shuffled), leased to this page so another labelling session is
  not shown it, and the progress counts (``elsewhere``: queries other sessions are being shown),
* ``POST /api/answer``: ``{"query_id", "answer": "a"|"b"|"tie"|"skip"|rating, "swapped", "elapsed_s"}``,
* ``POST /api/undo``: take back this annotator's last answer.
"""

from __future__ import annotations

import random
import secrets
import threading
from pathlib import Path
from typing import Any

from flask import Flask, abort, jsonify, render_template, request
from werkzeug.serving import BaseWSGIServer, make_server

from rlhf_gym.errors import ConfigError
from rlhf_gym.preference_store import (
    AlreadyAnsweredError,
    PreferenceBackend,
    Query,
    UnknownQueryError,
)

STATIC_DIR = Path(__file__).resolve().parent / "static"
LOCAL_HOSTS = ("127.0.0.1", "localhost")
TOKEN_HEADER = "X-Label-Token"


def check_local_host(host: str) -> str:
    """Return ``host`` if it is loopback; otherwise raise :class:`ConfigError` (the page has no login)."""
    if host not in LOCAL_HOSTS:
        raise ConfigError(
            f"the labelling page only listens on this machine ({' or '.join(LOCAL_HOSTS)}), not {host!r}: it has "
            f"no login beyond the token. To label from another machine, forward the port over SSH "
            f"(ssh -L 8765:127.0.0.1:8765 host).")
    return "127.0.0.1" if host == "localhost" else host


def create_app(store: PreferenceBackend, *, token: str, annotator: str, kind: str | None = None,
               seed: int | None = None) -> Flask:
    """The Flask app serving ``store``'s queue to ``annotator``; every request must carry ``token``."""
    if not token:
        raise ValueError("the labelling page needs a non-empty access token")
    app = Flask("rlhf_gym.live.web", static_folder=str(STATIC_DIR), template_folder=str(STATIC_DIR))
    rng = random.Random(seed)

    @app.before_request
    def _check_token() -> None:
        given = request.args.get("token") or request.headers.get(TOKEN_HEADER) or ""
        if not secrets.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            abort(403)

    def progress() -> dict[str, Any]:
        stats = store.stats()
        mine = stats["annotators"].get(annotator, 0)
        return {"answered": stats["answered"], "pending": stats["pending"], "mine": mine,
                "elsewhere": sum(1 for h in store.leased().values() if h != annotator)}

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
        return render_template("label.html", token=token, annotator=annotator)

    @app.get("/api/next")
    def next_query() -> Any:
        # Leased to this annotator: other labellers of the store are not shown it.
        query = store.claim(annotator, kind=kind)
        return jsonify(query=query_json(query) if query is not None else None, progress=progress())

    @app.post("/api/answer")
    def post_answer() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or "query_id" not in body or "answer" not in body:
            return jsonify(error="send JSON with query_id and answer"), 400
        meta: dict[str, Any] = {}
        if isinstance(body.get("swapped"), bool):
            meta["swapped"] = body["swapped"]
        if isinstance(body.get("elapsed_s"), (int, float)):
            meta["elapsed_s"] = round(float(body["elapsed_s"]), 3)
        try:
            ans = store.answer(int(body["query_id"]), body["answer"], annotator=annotator, source="web", meta=meta)
        except AlreadyAnsweredError as exc:
            return jsonify(error=str(exc), progress=progress()), 409
        except UnknownQueryError as exc:
            return jsonify(error=str(exc), progress=progress()), 404
        except (TypeError, ValueError) as exc:
            return jsonify(error=str(exc)), 400
        return jsonify(answer={"query_id": ans.query_id, "choice": ans.choice, "label": ans.label},
                       progress=progress())

    @app.post("/api/undo")
    def undo() -> Any:
        query = store.undo_last(annotator)
        return jsonify(undone=None if query is None else query.id, progress=progress())

    return app


class WebLabelServer:
    """Serve the labelling page for ``store`` on ``host:port`` (port 0: any free port) in a background thread.

    Example::

        server = WebLabelServer(store, annotator="alice", port=8765).start()
        print(server.url)   # http://127.0.0.1:8765/?token=...
        ...
        server.stop()
    """

    def __init__(self, store: PreferenceBackend, *, annotator: str, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, kind: str | None = None):
        self.host = check_local_host(host)
        self.token = token or secrets.token_urlsafe(24)
        self.app = create_app(store, token=self.token, annotator=annotator, kind=kind)
        try:
            self._server: BaseWSGIServer = make_server(self.host, int(port), self.app, threaded=True)
        except OSError as exc:
            raise ConfigError(f"cannot serve the labelling page on {self.host}:{port} ({exc}); pick another --port "
                              f"(0 picks a free one)") from None
        self.port = int(self._server.server_port)
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address, token included."""
        return f"http://{self.host}:{self.port}/?token={self.token}"

    def start(self) -> WebLabelServer:
        """Start serving in a daemon thread; returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name="rlhf-gym-label-web",
                                            daemon=True)
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until interrupted (Ctrl-C) or :meth:`stop` is called from another thread."""
        self._server.serve_forever()

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()
