"""Live human feedback: a person answers preference queries in the terminal or a local web page.

The queue of questions and every answer live in the preference store (:mod:`rlhf_gym.preference_store`), so
training (through the ``live-human`` provider, :class:`LiveHuman`) and the labelling front-ends (``rlhf-gym
label``, :class:`TerminalLabeler`, :class:`WebLabelServer`) can run in different processes, and nothing answered is
lost when one of them stops. The web server (Flask) loads only when it is used.
"""

from __future__ import annotations

import importlib
from typing import Any

from rlhf_gym.live.provider import LabellingStopped, LiveHuman, WaitPolicy
from rlhf_gym.live.terminal import NoTerminalError, TerminalLabeler

_LAZY = {"WebLabelServer": "rlhf_gym.live.web", "create_app": "rlhf_gym.live.web"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rlhf_gym.live' has no attribute {name!r}")


__all__ = ["LabellingStopped", "LiveHuman", "NoTerminalError", "TerminalLabeler", "WaitPolicy", "WebLabelServer",
           "create_app"]
