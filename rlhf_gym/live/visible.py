"""Untrusted text made safe to show: control and invisible format characters become visible escapes.

Prompts and completions come from models, files and other people. Shown raw in a terminal, ``\\x1b[2J`` clears the
labeller's screen, OSC sequences retitle the window or plant hyperlinks, ``\\r`` overwrites a line, and a bidi
override (U+202E) makes text read differently from what it is: a labeller could be led to prefer text that was
never written. Every such character is shown as its escape (``\\x1b``, ``\\u202e``), highlighted in the terminal,
so what is judged is what is stored. Newlines and tabs stay as they are (a CR-LF pair is a newline).

The labelling page applies the same rule in its script (``static/label.js``).

Example:
    >>> visible("ok\\x1b[2J\\u202eevil")
    'ok\\\\x1b[2J\\\\u202eevil'
    >>> visible("two\\r\\nlines\\tkept")
    'two\\nlines\\tkept'
"""

from __future__ import annotations

import unicodedata

from rich.text import Text

#: Unicode categories never shown raw: controls (C0, DEL, C1), format characters (bidi overrides and isolates,
#: zero-width characters, tag characters, soft hyphen), lone surrogates, and the line/paragraph separators
HIDDEN_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: letters and marks that draw nothing and are used to pad look-alike text
INVISIBLE = frozenset("\u034f\u115f\u1160\u3164\uffa0")
#: kept as they are: they only lay text out
KEPT = frozenset("\n\t")
#: how escapes are drawn in the terminal
ESCAPE_STYLE = "reverse red"


def hidden(ch: str) -> bool:
    """Whether the character ``ch`` is shown as an escape rather than raw."""
    return ch not in KEPT and (ch in INVISIBLE or unicodedata.category(ch) in HIDDEN_CATEGORIES)


def escape(ch: str) -> str:
    """The visible form of one character: ``\\xNN`` below U+0100, ``\\uNNNN``, or ``\\UNNNNNNNN``."""
    code = ord(ch)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def _pieces(text: str) -> list[tuple[str, bool]]:
    """``text`` split into (piece, is_escape) runs."""
    text = text.replace("\r\n", "\n")
    out: list[tuple[str, bool]] = []
    start = 0
    for i, ch in enumerate(text):
        if hidden(ch):
            if i > start:
                out.append((text[start:i], False))
            out.append((escape(ch), True))
            start = i + 1
    if start < len(text):
        out.append((text[start:], False))
    return out


def visible(text: str) -> str:
    """``text`` with every hidden character replaced by its escape (plain text, for logs and one-line messages)."""
    return "".join(piece for piece, _ in _pieces(str(text)))


def visible_text(text: str, style: str = "") -> Text:
    """``text`` as a rich :class:`~rich.text.Text` with the escapes highlighted (never parsed as markup)."""
    out = Text(style=style)
    for piece, is_escape in _pieces(str(text)):
        out.append(piece, style=ESCAPE_STYLE if is_escape else None)
    return out
