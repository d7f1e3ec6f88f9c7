"""Rendering of the text environments: the prompt and the completion as text (``"ansi"``) or as an RGB image
(``"rgb_array"``), so video recorders and libraries that ask for ``render_mode="rgb_array"`` (stable-baselines3's
``make_vec_env`` does) work with them, and Gymnasium can add its human-rendering window on top.

Every frame has the same size (``FRAME_COLUMNS`` × ``FRAME_ROWS`` characters of Pillow's built-in font): text is
wrapped to the width and the last rows are kept when it is longer, so a completion that grows stays in view.
"""

from __future__ import annotations

import textwrap
from functools import lru_cache
from typing import Any

import numpy as np

RENDER_MODES = ["ansi", "rgb_array"]
FRAME_COLUMNS = 72
FRAME_ROWS = 18
_PADDING = 8
_BACKGROUND = (250, 250, 247)
_PROMPT_COLOUR = (90, 90, 90)
_COMPLETION_COLOUR = (20, 60, 160)


def check_render_mode(env_id: str, render_mode: str | None) -> str | None:
    """``render_mode`` if it is None or one of :data:`RENDER_MODES`, else a ValueError listing them."""
    if render_mode is not None and render_mode not in RENDER_MODES:
        raise ValueError(f"{env_id}: render_mode must be one of {RENDER_MODES} or None, got {render_mode!r}")
    return render_mode


@lru_cache(maxsize=1)
def _font() -> Any:
    from PIL import ImageFont

    return ImageFont.load_default()


def _cell() -> tuple[int, int]:
    left, top, right, bottom = _font().getbbox("Mg|")
    return max(1, (right - left) // 3 + 1), bottom - top + 4


def frame_size() -> tuple[int, int]:
    """``(height, width)`` in pixels of every frame :func:`render_rgb` returns."""
    width, height = _cell()
    return FRAME_ROWS * height + 2 * _PADDING, FRAME_COLUMNS * width + 2 * _PADDING


def _lines(prompt: str, completion: str) -> list[tuple[str, bool]]:
    """Wrapped ``(text, is_completion)`` rows: the prompt, then the completion, last ``FRAME_ROWS`` kept."""
    rows: list[tuple[str, bool]] = []
    for text, is_completion in ((prompt, False), (completion, True)):
        for paragraph in text.splitlines() or [""]:
            printable = "".join(ch if ch.isprintable() else " " for ch in paragraph)
            wrapped = textwrap.wrap(printable, FRAME_COLUMNS, drop_whitespace=False) or [""]
            rows.extend((line, is_completion) for line in wrapped)
    return rows[-FRAME_ROWS:]


def render_rgb(prompt: str, completion: str) -> np.ndarray:
    """The prompt (grey) and the completion (blue) as an ``(H, W, 3)`` uint8 image of a fixed size."""
    from PIL import Image, ImageDraw

    height, width = frame_size()
    image = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    _, row_height = _cell()
    for i, (line, is_completion) in enumerate(_lines(prompt, completion)):
        draw.text((_PADDING, _PADDING + i * row_height), line, font=_font(),
                  fill=_COMPLETION_COLOUR if is_completion else _PROMPT_COLOUR)
    return np.asarray(image, dtype=np.uint8)


def render_frame(render_mode: str | None, prompt: str | None, completion: str) -> str | np.ndarray | None:
    """What ``env.render()`` returns for ``render_mode`` (None before the first reset or without a mode)."""
    if render_mode is None or prompt is None:
        return None
    if render_mode == "ansi":
        return f"{prompt}{completion}"
    return render_rgb(prompt, completion)
