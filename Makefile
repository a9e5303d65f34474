# tgw: the two commands are `make test` and `make demo`; both set up whatever is missing first.
#
# Environment understood here and by scripts/setup.sh:
#   TGW_ALLOW_NO_TIMESCALEDB=1  accept a machine where TimescaleDB could not be built (plain PostgreSQL only)
#   TGW_SETUP_BROWSER=0         skip chromium + chromium-driver (installed by default: tests/e2e needs them)
#   PYTEST_ARGS=...             extra pytest arguments for both passes (e.g. PYTEST_ARGS=-x)
# The test passes set TGW_TEST_STORAGE (timescaledb | postgres), which the integration fixtures read.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

BIN := .venv/bin
PG_CONFIG := $(or $(TGW_PG_CONFIG),/usr/lib/postgresql/15/bin/pg_config)
PYTEST_ARGS ?=
DEMO_ARGS ?=
BENCH_ARGS ?=

# $(call pytest,<label>,<TGW_TEST_STORAGE>,<pytest args>): one timed pytest pass; exit 5 (no tests ran) fails.
define pytest
t=$$SECONDS; echo "make: == pytest, $(1)"; rc=0; \
TGW_TEST_STORAGE=$(2) $(BIN)/pytest --durations=10 $(3) $(PYTEST_ARGS) || rc=$$?; \
if [ $$rc -eq 5 ]; then echo "make: pytest ran no tests [$(1)]; that counts as a failure" >&2; fi; \
if [ $$rc -ne 0 ]; then echo "make: !! pytest, $(1): FAILED (exit $$rc)" >&2; exit $$rc; fi; \
echo "make: -- pytest, $(1): passed in $$((SECONDS - t)) s"
endef

.PHONY: help setup lint test demo bench-ingest bench-commands bench-fleet bench-insights bench-console chaos bench-storm soak

help:
	@echo "make test          set up what is missing, then ruff, mypy, pytest (TimescaleDB, then plain PostgreSQL)"
	@echo "make demo          set up, then run everything: broker, database, gateway, 200 cars, console"
	@echo "make setup         Debian packages, TimescaleDB from trixie source, .venv (idempotent)"
	@echo "make lint          ruff check + mypy --strict (needs .venv: make setup)"
	@echo "make bench-ingest  set up, then the ingest benchmark"
	@echo "make chaos         set up, then the fault suite (BENCH_SECONDS per phase, default 400)"
	@echo "make bench-storm   set up, then 20,000 cars reconnecting with backlogs at once"
	@echo "make soak          set up, then 30 minutes at half the maximum rate (BENCH_SECONDS)"
	@echo "make bench-commands  set up, then the commands benchmark (lock/unlock latency, rate)"
	@echo "make bench-fleet   set up, then the simulated fleet benchmark (10,000 cars: connect time, CPU, memory)"
	@echo "make bench-insights  set up, then the insights benchmark (30 days of 2,000 cars: trips, rollups, API p95)"
	@echo "make bench-console set up, then the console at 10,000 cars (frame times in headless Chromium)"

setup:
	@bash scripts/setup.sh

lint:
	@test -x $(BIN)/ruff || { echo "make: no .venv yet: run 'make setup' first" >&2; exit 1; }
	@t=$$SECONDS; echo "make: == ruff check"; $(BIN)/ruff check .; \
	echo "make: == mypy gateway device_sim schemas"; $(BIN)/mypy gateway device_sim schemas; \
	echo "make: -- lint passed in $$((SECONDS - t)) s"

test: setup
	@$(MAKE) lint
	@if [ -f "$$($(PG_CONFIG) --sharedir)/extension/timescaledb.control" ]; then \
	  $(call pytest,TimescaleDB mode: all tests,timescaledb,); \
	  $(call pytest,plain PostgreSQL mode: storage tests,postgres,-m storage); \
	elif [ "$${TGW_ALLOW_NO_TIMESCALEDB:-0}" = 1 ] || [ "$${TGW_SKIP_TIMESCALEDB:-0}" = 1 ]; then \
	  echo "make: WARNING: TimescaleDB is not installed; running everything on plain PostgreSQL only" >&2; \
	  $(call pytest,plain PostgreSQL mode: all tests,postgres,); \
	else \
	  echo "make: TimescaleDB is not installed (run scripts/build_timescaledb.sh), or set TGW_ALLOW_NO_TIMESCALEDB=1" >&2; \
	  exit 1; \
	fi
	@echo "make: test passed"

demo: setup
	$(BIN)/tgw demo $(DEMO_ARGS)

bench-ingest: setup
	$(BIN)/python -m bench.ingest $(BENCH_ARGS)

bench-commands: setup
	$(BIN)/python -m bench.commands $(BENCH_ARGS)

bench-fleet: setup
	$(BIN)/python -m bench.fleet $(BENCH_ARGS)

bench-insights: setup
	$(BIN)/python -m bench.insights $(BENCH_ARGS)

chaos: setup
	$(BIN)/python -m bench.chaos $(BENCH_ARGS)

bench-storm: setup
	$(BIN)/python -m bench.storm $(BENCH_ARGS)

soak: setup
	$(BIN)/python -m bench.soak $(BENCH_ARGS)

bench-console: setup
	TGW_BENCH_CONSOLE=1 $(BIN)/pytest -s -p no:cacheprovider tests/e2e/test_console_scale.py
