# Subcenter: the two commands a newcomer needs are `make run` and `make test`.
SHELL := /bin/bash
SWIFT ?= swift
BIN := .build/release

.PHONY: all bootstrap build build-debug certs run test test-unit test-interop check-generated format lint bench clean

all: build

bootstrap:
	@scripts/bootstrap

build: bootstrap
	$(SWIFT) build -c release --product subcenterd
	$(SWIFT) build -c release --product subcenterctl
	$(SWIFT) build -c release --product interop-server

certs: bootstrap
	@certs/generate

## make run: install what is missing, build, make dev certificates and a token, start the server.
run: build certs
	@scripts/run-dev $(ARGS)

## make test: the whole suite (CI runs this).
test: bootstrap check-generated lint build certs test-unit test-interop

check-generated:
	@scripts/gen-proto --check

lint:
	@$(SWIFT) format lint --strict --recursive Sources Tests Package.swift 2>&1 | grep -v '^$$' | head -50; \
	  $(SWIFT) format lint --strict --recursive Sources Tests Package.swift >/dev/null 2>&1 \
	  || { echo "lint: run 'make format'"; exit 1; }

format:
	$(SWIFT) format --in-place --recursive Sources Tests Package.swift

test-unit: bootstrap
	$(SWIFT) test --parallel

test-interop: build certs
	Tests/interop/run $(BIN)

bench: build certs
	@scripts/bootstrap --bench
	bench/run

clean:
	rm -rf .build
