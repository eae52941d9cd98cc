# carecli: the two set-up commands are `make demo` and `make test`.
# Needs only python3 (with venv), make and git; everything else goes into .venv.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.install-stamp
DEMO_MEMBERS ?= 5000
PYTEST_ARGS ?=
# pytest-xdist workers (one per core; `make test PYTEST_WORKERS=0` runs in this one process). Whole test
# files go to one worker (--dist loadfile): their module-scoped fixtures (a seeded pair, an SSH host) are
# then built once, not once per worker.
PYTEST_WORKERS ?= auto

.PHONY: install demo test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	touch $(STAMP)

## make demo: embedded PostgreSQL with demo data (created once, kept in your data dir)
demo: install
	$(BIN)/carecli seed --members $(DEMO_MEMBERS) --seed 42 --if-empty
	$(BIN)/carecli app

## make test: the whole suite (embedded server by default; CARECLI_TEST_PG=... for another)
test: install
	$(BIN)/python -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

## make lint: ruff over the code, the tests, the benchmarks and the migrations, then mypy over carecli, tests and benchmarks
## (rules and settings in pyproject.toml)
lint: install
	$(BIN)/ruff check carecli tests benchmarks migrations
	$(BIN)/mypy

## make bench: seed throughput table (BENCH_MEMBERS, CARECLI_TEST_PG or the local server)
BENCH_MEMBERS ?= 100000
bench: install
	$(BIN)/python benchmarks/seed_bench.py --members $(BENCH_MEMBERS)

clean:
	rm -rf $(VENV) .pytest_cache
