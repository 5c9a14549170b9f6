# Two commands do all the set-up on a fresh machine: `make run` and `make test`.
# Both create (or reuse) the virtual environment in .venv and install the project into it.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench

.PHONY: run test bench clean venv

# Two distributions, installed editable: obclient (client/: obclient, obproto, obrelay, obctl)
# first, then observer (the server and obsim), which depends on it.
$(STAMP): pyproject.toml setup.py client/pyproject.toml client/setup.py \
		client/obproto/_latch_c.c client/obproto/_pyint64.h observer/book/_book_c.c \
		observer/feeds/_binance_c.c
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -qq --upgrade pip 'setuptools>=77' wheel
	$(PY) -m pip install -qq -e './client[relay]'
	$(PY) -m pip install -qq -e '.[test,sim]'
	@touch $@

venv: $(STAMP)

run: $(STAMP)
	$(PY) -m obsim.demo

# Two workers (pytest-xdist): the tests use run-unique names and share the machine. loadgroup:
# the tests of one xdist_group mark run on one worker, one after another (tests that keep the
# cores busy on purpose, and those they would slow down).
test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadgroup

$(BENCH_STAMP): $(STAMP)
	$(PY) -m pip install -qq -e '.[test,sim,bench]'
	@touch $@

bench: $(BENCH_STAMP)
	@for b in bench/*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) build *.egg-info client/build client/*.egg-info .pytest_cache
