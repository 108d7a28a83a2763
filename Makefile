# `make demo` and `make test` set everything up on a fresh machine (see README.md).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.covfuse-installed

.PHONY: demo test bench install clean

# The venv is rebuilt only when the pins or the project metadata change.
$(STAMP): requirements.lock pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.lock
	$(PY) -m pip install -q --disable-pip-version-check --no-deps -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/covfuse demo

test: $(STAMP)
	$(PY) -m pytest -n 2 --dist loadfile

# `make bench WHAT=layers` (or models, data); the JSON record goes to bench.json.
WHAT ?= all
bench: $(STAMP)
	$(VENV)/bin/covfuse bench $(WHAT) --json bench.json --overwrite

clean:
	rm -rf $(VENV) .pytest_cache build dist src/*.egg-info
