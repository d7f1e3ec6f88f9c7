#!/usr/bin/env bash
# Set up everything rlhf_gym needs on a fresh machine: a virtualenv in .venv with the CPU build of torch,
# rlhf_gym itself (editable) and, with --test, the test, Ray, tracker and text-game extras, the example plugin and
# headless Chromium.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
with_tests=0
[ "${1:-}" = "--test" ] && with_tests=1

if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip
fi
pip="$VENV/bin/pip"
# The CPU build of torch first: a bare `torch` requirement could otherwise pull a multi-GB CUDA build.
"$VENV/bin/python" -c "import torch" 2>/dev/null || "$pip" install -q "torch==2.13.0"
if [ "$with_tests" = 1 ]; then
    "$pip" install -q -e ".[test,ray,trackers,games]"  # trackers: wandb, mlflow, trackio, tested offline
    # The example third-party plugin is installed as a real distribution, as a user would.
    "$pip" install -q --no-build-isolation ./examples/rlhf_keyword_plugin
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
                || echo "warning: could not install chromium; the browser test will be skipped" >&2
        else
            echo "note: install chromium and chromium-driver to run the browser test" >&2
        fi
    fi
else
    "$pip" install -q -e .
fi
