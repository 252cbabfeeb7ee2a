# Set-up and the two jobs the README names. Everything runs in .venv; torch is installed first
# and explicitly (torch==2.13.0: a CPU wheel here), so that pip never pulls a CUDA build onto
# a CPU machine. To keep your own torch, `pip install -e .` in your environment instead.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed-stamp

.PHONY: install browser demo test test-fast lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[test,metrics,api,web]"
	$(MAKE) --no-print-directory browser
	touch $(STAMP)

# The web UI's end-to-end test drives the system Chromium (Playwright downloads nothing). Where
# none is installed, install Debian's package when we may (root + apt-get); else say that the
# browser test will be skipped.
APT_CHROMIUM := DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
browser:
	@command -v chromium >/dev/null || command -v chromium-browser >/dev/null \
	  || command -v google-chrome >/dev/null \
	  || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	       && { $(APT_CHROMIUM) || { apt-get update -q >/dev/null && $(APT_CHROMIUM); }; }; } \
	  || echo "note: no Chromium found; install it (e.g. apt-get install chromium) to run the web UI browser test"

# The main job: a real fine-tune of a tiny model built offline, on CPU, in a minute or two;
# it asks the model "Who are you?" before and after training.
demo: $(STAMP)
	$(PY) -m tuneforge.demo

test: lint
	$(VENV)/bin/pytest -q

# The edit-test loop: everything not marked slow or gpu (unit tests and the quick
# integration/e2e checks), without lint.
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow and not gpu"

# mypy reads its settings from pyproject.toml; its .mypy_cache makes a second run take seconds.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) models saves .pytest_cache .mypy_cache
