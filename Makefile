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

.PHONY: install server system-deps envcheck demo test bench clean

install: $(VENV)/.installed server

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

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

$(ENVCHECK): tools/envcheck/go.mod tools/envcheck/go.sum tools/envcheck/main.go
	@echo "envcheck: building $@ (once per machine)"
	@mkdir -p "$(dir $@)"
	cd tools/envcheck && go build -trimpath -o "$@.tmp" . && mv "$@.tmp" "$@"

# PostgreSQL (dynamic database credentials), Prometheus/promtool (alert rules) and Alertmanager/amtool from Debian.
system-deps:
	@missing=""; \
	[ -x /usr/bin/promtool ] || missing="$$missing prometheus"; \
	[ -x /usr/bin/prometheus-alertmanager ] || missing="$$missing prometheus-alertmanager"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		echo "system-deps: installing$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

demo: install
	@bash scripts/demo.sh

test: install system-deps envcheck
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install system-deps
	$(BIN)/python bench/migrate.py
	$(BIN)/python bench/daemon.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
