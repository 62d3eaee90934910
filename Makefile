# One entry point per task. `make test` is what CI runs (via .ci/run).
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install run vectors proto proto-clients test-go test-ts test-clients proto-check lint typecheck test test-postgres bench clean

$(BIN)/modelroute: pyproject.toml
	@$(PY) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "modelroute needs Python >= 3.11 and '$(PY)' is not; name one: make run PY=python3.11"; \
	  exit 2; }
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/modelroute

## Run the service: embedded etcd (seeded from config/bootstrap.yaml) + SQLite in .modelroute/
run: install
	$(BIN)/modelroute serve

## Regenerate the committed protobuf stubs (buf + pinned grpcio-tools/mypy-protobuf).
proto: install
	PYTHON=$(abspath $(BIN)/python) $(BIN)/buf generate

## Rewrite tests/vectors/bucketing.json (experiment bucketing test vectors for every client).
vectors: install
	$(BIN)/python tools/bucketing_vectors.py

## Regenerate the Go and TypeScript client stubs too (needs Debian's protoc-gen-go, and npm).
proto-clients: proto
	sh clients/go/generate.sh
	cd clients/typescript && npm ci --silent && BUF=$(abspath $(BIN)/buf) npm run generate

## CI: lint the contract and fail if regenerating the stubs changes anything.
proto-check: install
	$(BIN)/buf lint
	tmp=$$(mktemp -d) && PYTHON=$(abspath $(BIN)/python) $(BIN)/buf generate -o $$tmp && \
	  diff -r -x __pycache__ $$tmp/clients/python/modelroute clients/python/modelroute \
	    --exclude=client --exclude='*.typed' && rm -rf $$tmp

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: install
	$(BIN)/mypy

## The test command (README): contract checks, lint, types, then the suite against real etcd + SQLite.
test: proto-check lint typecheck
	$(BIN)/pytest
	$(MAKE) test-clients

## Client libraries in other languages, each against a live `modelroute serve`.
test-clients: test-go test-ts

## TypeScript client: npm ci (lockfile), stubs checked, tsc, node:test against a live server.
test-ts: install
	MODELROUTE_BIN=$(abspath $(BIN)/modelroute) BUF=$(abspath $(BIN)/buf) bash clients/typescript/test.sh

## Go client: Debian's Go and Go libraries (installed by the script), stubs checked, go vet, go test.
test-go: install
	MODELROUTE_BIN=$(abspath $(BIN)/modelroute) sh clients/go/test.sh

## The suite again with PostgreSQL: MODELROUTE_TEST_DATABASE_URL=postgresql://user@host:port/db
test-postgres: install
	@test -n "$$MODELROUTE_TEST_DATABASE_URL" || (echo "set MODELROUTE_TEST_DATABASE_URL" && exit 2)
	$(BIN)/pytest

bench: install
	$(BIN)/python bench/run.py

clean:
	rm -rf .modelroute .pytest_cache .mypy_cache .ruff_cache
