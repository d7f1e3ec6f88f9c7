# Two commands do everything on a fresh machine:
#   make demo   set up, then run the offline demo (tiny policy trained with RLHF, reward rising)
#   make test   set up, then run the test suite
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test bench lint setup

demo:
	./scripts/setup.sh
	$(VENV)/bin/rlhf-gym train $(ARGS)

test:
	./scripts/setup.sh --test
	$(PY) -m pytest -q -n auto --maxprocesses 4 --dist loadfile $(ARGS)

bench:
	./scripts/setup.sh
	$(VENV)/bin/pip install -q -e ".[bench]"
	$(PY) bench/run_all.py

lint:
	$(VENV)/bin/ruff check rlhf_gym plugins tests examples bench
