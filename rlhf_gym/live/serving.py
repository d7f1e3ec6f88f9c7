"""A token-protected page served from a background thread: what the labelling page (:mod:`rlhf_gym.live.web`) and
the chat page (:mod:`rlhf_gym.live.chat`) share once each has built its WSGI server.

A subclass sets ``host``, ``port``, ``token`` and ``_server`` (a werkzeug server) in its ``__init__``; this class
gives it the address, a daemon serving thread, serving in the caller's thread, and a clean stop.
"""

from __future__ import annotations

import threading
from typing import Any, Self


class ThreadedPageServer:
    """Base of the pages served on ``host:port`` with a token in their address."""

    #: name of the serving thread (seen in thread dumps)
    thread_name = "rlhf-gym-web"
    host: str
    port: int
    token: str
    _server: Any
    _thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address, token included."""
        return f"http://{self.host}:{self.port}/?token={self.token}"

    def start(self) -> Self:
        """Start serving in a daemon thread; returns ``self``."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._server.serve_forever, name=self.thread_name, daemon=True)
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
