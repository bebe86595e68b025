# The README's two commands are `make demo` and `make test`; both install first.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install test lint format demo bench clean

install: $(STAMP)

# Idempotent: the stamp is rebuilt only when the dependency list changes.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.14.1 torchvision==0.29.1
	$(PIP) install -q -e '.[dev]'
	# The original LLaVA code, without its pinned (2023) dependencies: used by the parity tests.
	$(PIP) install -q --no-deps llava-torch==1.2.2.post1
	touch $(STAMP)

test: install
	$(PY) -m pytest -q -x --durations=15 tests

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: install
	$(PY) -m radio_vlm.cli demo --out demo_out

# Each benchmark prints a table and, last, one JSON line of ratios against a baseline run beside it.
bench: install
	$(PY) bench/tower.py --json
	$(PY) bench/llava_tokens.py --json
	$(PY) bench/llava_generate.py --json
	$(PY) bench/llava_memory.py --json
	$(PY) bench/distill.py --json
	$(PY) bench/data_scale.py --json
	$(PY) bench/eradio.py --json
	$(PY) bench/eval_knn.py --json

clean:
	rm -rf demo_out .pytest_cache
