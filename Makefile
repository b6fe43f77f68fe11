# walflow's developer commands. `make help` lists them. Every target needs Go and, except
# lint, the PostgreSQL server binaries; `make test` installs what is missing (scripts/setup).

GO       ?= go
FUZZTIME ?= 10s
PKGS     ?= ./...
# staticcheck runs from the module proxy at this version (checksums from the Go checksum
# database), so a fresh machine needs nothing but Go.
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: setup
setup: ## install the PostgreSQL server binaries and Chromium when missing (scripts/setup)
	./scripts/setup

.PHONY: test
test: setup ## install what is missing, then run every test with the race detector (what .ci/run runs)
	$(GO) test -race -timeout 20m $(PKGS)

.PHONY: lint
lint: ## go vet, staticcheck, and fail on files gofmt would change
	$(GO) vet $(PKGS)
	$(GO) run $(STATICCHECK) $(PKGS)
	@unformatted=$$(find . -name '*.go' -not -path './.git/*' -not -path '*/testdata/*' -print0 | xargs -0 gofmt -l); \
	if [ -n "$$unformatted" ]; then echo "gofmt would change:"; echo "$$unformatted"; exit 1; fi

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME (default 10s) each
	@set -e; \
	for pkg in $$($(GO) list $(PKGS)); do \
		dir=$$($(GO) list -f '{{.Dir}}' $$pkg); \
		grep -qs '^func Fuzz' $$dir/*_test.go || continue; \
		for target in $$($(GO) test -list 'Fuzz.*' $$pkg | grep '^Fuzz'); do \
			echo "== $$pkg $$target"; \
			$(GO) test -run '^$$' -fuzz "^$$target$$" -fuzztime $(FUZZTIME) $$pkg; \
		done; \
	done

.PHONY: bench
bench: ## run every benchmark once (the drain benchmark takes minutes)
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 60m $(PKGS)

.PHONY: demo
demo: ## start a throwaway PostgreSQL and print walflow's events live (Ctrl-C stops)
	$(GO) run ./cmd/walflow demo

.PHONY: build
build: ## build the walflow binary into ./walflow
	$(GO) build -o walflow ./cmd/walflow
