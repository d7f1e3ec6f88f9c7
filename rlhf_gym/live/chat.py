"""A person as the user of ``Dialogue-v0``: the conversation shown in the terminal or a local web page.

Used by the ``live-user`` user simulator. :class:`TerminalChat` prints each waiting conversation and reads the
person's next message from a line of input. :class:`WebChatServer` serves a small page (Flask, 127.0.0.1 only, an
access token in the URL checked on every request, as the labelling page does) over an in-memory
:class:`ChatQueue`: the environment submits the conversations that wait for the user, the page shows the oldest,
and the person's reply (or "end") goes back to the waiting environment.

Endpoints of the page (all need ``?token=…`` or the ``X-Label-Token`` header):

* ``GET /``: the page; ``GET /static/chat.js``: its script,
* ``GET /api/chat/next``: the oldest conversation waiting for a reply (``null`` when none) and the queue length,
* ``POST /api/chat/reply``: ``{"id": …, "text": "…"}`` or ``{"id": …, "end": true}``.

Nothing here is stored on disk: a conversation is the environment's state, and a reply lives only until the
environment reads it.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Sequence
from typing import IO, Any

from rlhf_gym.errors import ConfigError, RLHFGymError
from rlhf_gym.live.serving import ThreadedPageServer

END_COMMANDS = ("", "/end")
MAX_REQUEST_BYTES = 64 * 1024
QUIT_COMMAND = "/quit"


class ChatStopped(RLHFGymError):
    """The person stopped the conversation session (``/quit`` or end of input)."""


class TerminalChat:
    """Show conversations in the terminal and read the user's replies, one line each.

    An empty line or ``/end`` ends the conversation, ``/quit`` (or end of input) raises :class:`ChatStopped`.
    ``stdin``/``stdout`` default to the process's own; stdin must then be a terminal.
    """

    def __init__(self, stdin: IO[str] | None = None, stdout: IO[str] | None = None):
        from rich.console import Console

        if stdin is None:
            from rlhf_gym.live.terminal import require_terminal

            require_terminal(sys.stdin)
        self.stdin = stdin if stdin is not None else sys.stdin
        self.console = Console(file=stdout if stdout is not None else sys.stdout, highlight=False)

    def ask(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[str | None]:
        from rich.markup import escape

        out: list[str | None] = []
        for k, conversation in enumerate(conversations):
            self.console.rule(f"conversation {k + 1} of {len(conversations)}")
            for message in conversation:
                style = {"assistant": "bold green", "user": "bold cyan"}.get(message["role"], "dim")
                self.console.print(f"[{style}]{message['role']}:[/{style}] {escape(message['content'])}")
            self.console.print("[dim]your reply (empty or /end ends the conversation, /quit stops)[/dim]")
            self.console.print("you> ", end="")
            line = self.stdin.readline()
            if not line or line.strip() == QUIT_COMMAND:
                raise ChatStopped("the live user stopped the session")
            text = line.rstrip("\r\n")
            out.append(None if text.strip() in END_COMMANDS else text)
        return out


class ChatQueue:
    """Conversations waiting for the user's reply, in order; thread-safe."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._turns: dict[int, dict[str, Any]] = {}
        self._next_id = 1

    def submit(self, conversations: Sequence[Sequence[dict[str, str]]]) -> list[int]:
        with self._cond:
            ids = []
            for conversation in conversations:
                self._turns[self._next_id] = {"messages": [dict(m) for m in conversation], "answered": False,
                                              "reply": None}
                ids.append(self._next_id)
                self._next_id += 1
            self._cond.notify_all()
            return ids

    def next(self) -> tuple[int, list[dict[str, str]]] | None:
        """The oldest conversation still waiting for a reply."""
        with self._cond:
            for turn_id, turn in self._turns.items():
                if not turn["answered"]:
                    return turn_id, turn["messages"]
            return None

    def pending(self) -> int:
        with self._cond:
            return sum(1 for t in self._turns.values() if not t["answered"])

    def answer(self, turn_id: int, reply: str | None) -> None:
        """Record the reply (``None``: end the conversation). Raises KeyError (unknown) or ValueError (answered)."""
        with self._cond:
            turn = self._turns.get(turn_id)
            if turn is None:
                raise KeyError(f"no conversation {turn_id} is waiting (it was answered, or timed out)")
            if turn["answered"]:
                raise ValueError(f"conversation {turn_id} was already answered")
            turn["answered"], turn["reply"] = True, reply
            self._cond.notify_all()

    def wait(self, ids: Sequence[int], timeout_s: float | None = None) -> list[str | None]:
        """The replies to ``ids`` once all are answered; those unanswered after ``timeout_s`` end (``None``)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not all(self._turns[i]["answered"] for i in ids):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(timeout=left if left is not None else 1.0)
            return [self._turns.pop(i)["reply"] for i in ids]


def create_chat_app(queue: ChatQueue, *, token: str) -> Any:
    """The Flask app of the chat page over ``queue``; every request must carry ``token``."""
    from flask import Flask, abort, jsonify, render_template, request

    from rlhf_gym.live.web import STATIC_DIR, TOKEN_HEADER

    if not token:
        raise ValueError("the chat page needs a non-empty access token")
    app = Flask("rlhf_gym.live.chat", static_folder=str(STATIC_DIR), template_folder=str(STATIC_DIR))
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES  # a reply is a chat message, not a file

    @app.before_request
    def _check_token() -> None:
        given = request.args.get("token") or request.headers.get(TOKEN_HEADER) or ""
        if not secrets.compare_digest(given.encode("utf-8"), token.encode("utf-8")):
            abort(403)

    @app.get("/")
    def page() -> str:
        return render_template("chat.html", token=token)

    @app.get("/api/chat/next")
    def next_turn() -> Any:
        waiting = queue.next()
        turn = None if waiting is None else {"id": waiting[0], "messages": waiting[1]}
        return jsonify(turn=turn, pending=queue.pending())

    @app.post("/api/chat/reply")
    def reply() -> Any:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("id"), int) or isinstance(body.get("id"), bool):
            return jsonify(error="send JSON with the conversation's integer id and text (or end: true)"), 400
        if body.get("end") is True:
            text = None
        elif isinstance(body.get("text"), str) and body["text"].strip():
            text = body["text"]
        else:
            return jsonify(error="send a non-empty text, or end: true to end the conversation"), 400
        try:
            queue.answer(body["id"], text)
        except KeyError as exc:
            return jsonify(error=str(exc.args[0])), 404
        except ValueError as exc:
            return jsonify(error=str(exc)), 409
        return jsonify(ok=True, pending=queue.pending())

    return app


class WebChatServer(ThreadedPageServer):
    """Serve the chat page on ``host:port`` (port 0: any free port) in a background thread.

    Example::

        server = WebChatServer(port=8766).start()
        print(server.url)                                   # open it in a browser
        replies = server.ask(conversations, timeout_s=600)  # blocks until the person answered each
        server.stop()
    """

    thread_name = "rlhf-gym-chat-web"

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0, token: str | None = None):
        from werkzeug.serving import make_server

        from rlhf_gym.live.web import check_local_host

        self.host = check_local_host(host)
        self.token = token or secrets.token_urlsafe(24)
        self.queue = ChatQueue()
        self.app = create_chat_app(self.queue, token=self.token)
        try:
            self._server = make_server(self.host, int(port), self.app, threaded=True)
        except OSError as exc:
            raise ConfigError(f"cannot serve the chat page on {self.host}:{port} ({exc}); pick another port "
                              f"(0 picks a free one)") from None
        self.port = int(self._server.server_port)

    def ask(self, conversations: Sequence[Sequence[dict[str, str]]],
            timeout_s: float | None = None) -> list[str | None]:
        """Put ``conversations`` on the page and wait for the replies (``None``: ended or timed out)."""
        return self.queue.wait(self.queue.submit(conversations), timeout_s)
