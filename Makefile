# vaultsync: `make demo` runs the main job against a local real server; `make test` passes the tests.
# Both install what they need first (idempotent: a second run does nothing it already did).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CACHE  := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/vaultsync
# The pinned server (tools/vault/go.mod); built once per machine, shared by every clone.
SERVER_VERSION := vault-v1.14.1
SERVER := $(CACHE)/$(SERVER_VERSION)/vault
PYTEST_ARGS ?=

.PHONY: install install-app dist server system-deps envcheck jaeger otelcol kafka telemetry demo test coverage mutation bench bench-scale clean

install: $(VENV)/.installed server

# The tests' venv: vaultsync and its test extras.
$(VENV)/.installed: pyproject.toml | $(VENV)/.app
	$(BIN)/pip install -q -e '.[test]'
	touch $@

# What `make demo` needs: vaultsync itself, nothing more.
install-app: $(VENV)/.app server

$(VENV)/.app: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# A wheel in dist/ (what `pipx install .` / `pip install .` build on the fly).
dist: $(VENV)/.app
	$(BIN)/pip wheel -q --no-deps -w dist .

# Skip the build when a bao/vault binary is on PATH or the pinned one is already built.
server:
	@if command -v bao >/dev/null || command -v vault >/dev/null; then \
		echo "server: using $$(command -v bao || command -v vault)"; \
	elif [ -x "$(SERVER)" ]; then \
		echo "server: using $(SERVER)"; \
	else \
		echo "server: building $(SERVER_VERSION) from the Go module proxy (once per machine, ~5 min)"; \
		mkdir -p "$(dir $(SERVER))"; \
		cd tools/vault && go build -trimpath -ldflags '-s -w' -o "$(SERVER).tmp" . && mv "$(SERVER).tmp" "$(SERVER)"; \
	fi

# tools/envcheck: compose-go's and the docker CLI's env-file parsers, the readers the
# round-trip tests check rendered files against. Built once per machine per source version.
ENVCHECK_HASH = $(shell cat tools/envcheck/go.mod tools/envcheck/go.sum tools/envcheck/main.go | sha256sum | cut -c1-12)
ENVCHECK := $(CACHE)/envcheck-$(ENVCHECK_HASH)/envcheck

envcheck: $(ENVCHECK)

# Order-only: the path is keyed by the inputs' hash, so a fresh checkout (newer file dates) never rebuilds it.
$(ENVCHECK): | tools/envcheck/go.mod tools/envcheck/go.sum tools/envcheck/main.go
	@echo "envcheck: building $@ (once per machine)"
	@mkdir -p "$(dir $@)"
	cd tools/envcheck && go build -trimpath -o "$@.tmp" . && mv "$@.tmp" "$@"

# The compose stack's telemetry parts the tests run for real (tests/fixtures_telemetry.py),
# each built or resolved once per machine into $(CACHE) (keyed by version or input hash, so a
# target never depends on file dates and is never rebuilt when present).
# Jaeger v2 (an OpenTelemetry Collector distribution) from the Go module proxy, pinned in tools/jaeger/go.mod.
JAEGER_VERSION := v1.76.0
JAEGER := $(CACHE)/jaeger-$(JAEGER_VERSION)/jaeger
# The collector, generated and compiled by the official builder (pinned in tools/otelcol/builder/go.mod)
# from tools/otelcol/builder-config.yaml; keyed by those inputs.
OTELCOL_HASH = $(shell cat tools/otelcol/builder-config.yaml tools/otelcol/builder/go.mod tools/otelcol/builder/go.sum | sha256sum | cut -c1-12)
OTELCOL_DIR = $(CACHE)/otelcol-$(OTELCOL_HASH)
OTELCOL = $(OTELCOL_DIR)/otelcol-vaultsync
# Kafka (KRaft) broker jars from Maven Central, resolved by tools/kafka/pom.xml.
KAFKA_VERSION := 3.9.0
KAFKA_LIBS := $(CACHE)/kafka-$(KAFKA_VERSION)/libs

telemetry: jaeger otelcol kafka

jaeger: $(JAEGER)

$(JAEGER):
	@echo "jaeger: building $(JAEGER_VERSION) from the Go module proxy (once per machine, ~5 min)"
	@mkdir -p "$(dir $@)"
	cd tools/jaeger && go build -trimpath -ldflags '-s -w' -o "$@.tmp" github.com/jaegertracing/jaeger/cmd/jaeger && mv "$@.tmp" "$@"

otelcol: $(OTELCOL)

$(OTELCOL):
	@echo "otelcol: building with the OpenTelemetry Collector builder (once per machine, ~5 min)"
	@rm -rf "$(OTELCOL_DIR).tmp" && mkdir -p "$(OTELCOL_DIR).tmp"
	cd tools/otelcol/builder && go build -o "$(OTELCOL_DIR).tmp/builder" go.opentelemetry.io/collector/cmd/builder
	cd "$(OTELCOL_DIR).tmp" && ./builder --config "$(CURDIR)/tools/otelcol/builder-config.yaml" --ldflags='-s -w' \
		&& mv src/otelcol-vaultsync . && rm -rf src builder
	@rm -rf "$(OTELCOL_DIR)" && mv "$(OTELCOL_DIR).tmp" "$(OTELCOL_DIR)"

kafka: system-deps $(KAFKA_LIBS)/.resolved

$(KAFKA_LIBS)/.resolved:
	@echo "kafka: resolving the $(KAFKA_VERSION) broker and its dependencies from Maven Central (once per machine)"
	@rm -rf "$(KAFKA_LIBS).tmp"
	mvn -B -q -f tools/kafka/pom.xml dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$(KAFKA_LIBS).tmp"
	@rm -rf "$(KAFKA_LIBS)" && mv "$(KAFKA_LIBS).tmp" "$(KAFKA_LIBS)" && touch "$@"

# PostgreSQL (dynamic database credentials), Prometheus/promtool (alert rules), Alertmanager/amtool, Maven + a
# JRE (the Kafka broker), and systemd-analyze (deploy/systemd's unit) from Debian.
system-deps:
	@missing=""; \
	[ -x /usr/bin/promtool ] || missing="$$missing prometheus"; \
	[ -x /usr/bin/prometheus-alertmanager ] || missing="$$missing prometheus-alertmanager"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v mvn >/dev/null || missing="$$missing maven"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
		echo "system-deps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: install-app
	@bash scripts/demo.sh

# The whole suite runs under coverage (the CLI and daemon subprocesses too) and fails, with a message
# saying what dropped, when vaultsync/'s coverage falls below its floor (pyproject.toml); see README
# "Coverage and mutation testing". A partial run (PYTEST_ARGS set) or COVERAGE=0 runs plain pytest.
COVERAGE ?= $(if $(strip $(PYTEST_ARGS)),0,1)
ifeq ($(COVERAGE),1)
test: coverage
else
test: install system-deps envcheck telemetry
	$(BIN)/python -m pytest $(PYTEST_ARGS)
endif

# The suite under coverage, subprocesses included; the per-module report with the missing lines goes
# to stdout and coverage-report.txt. Fails on a test failure or a coverage drop (scripts/coverage_check.py).
coverage: install system-deps envcheck telemetry
	rm -f .coverage .coverage.*
	$(BIN)/python -m coverage run -m pytest $(PYTEST_ARGS); status=$$?; \
	$(BIN)/python -m coverage combine -q; \
	$(BIN)/python scripts/coverage_check.py --report coverage-report.txt; check=$$?; \
	exit $$(( status ? status : check ))

# Mutation testing of the modules that hold the guarantees (slow: not part of `make test` or CI).
# MUTATE picks the modules (default: all in scripts/mutation.py); see README "Testing".
MUTATE ?=
mutation: install system-deps
	$(BIN)/pip install -q -e '.[test,mutation]'
	$(BIN)/python scripts/mutation.py $(MUTATE)

bench: install system-deps
	$(BIN)/python bench/migrate.py
	$(BIN)/python bench/daemon.py

# One daemon at scale against vault agent (minutes; the issue-16 size is
# SCALE="--services 1000 --leases 10000 --seconds 600").
SCALE ?= --services 50 --leases 500 --seconds 120
bench-scale: install system-deps
	$(BIN)/python bench/scale.py $(SCALE)

clean:
	rm -rf $(VENV) dist build *.egg-info .pytest_cache .coverage .coverage.* coverage-report.txt htmlcov mutants
