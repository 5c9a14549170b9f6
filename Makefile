# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Both create (or reuse) the virtual environment in .venv and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test bench clean venv

$(STAMP): pyproject.toml setup.py proto/_latch_c.c observer/book/_book_c.c observer/feeds/_binance_c.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,sim]'
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m observer.demo

test: $(STAMP)
	$(PY) -m pytest -q

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[test,sim,bench]'
	@touch $@

bench: $(BENCH_STAMP)
	@for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
