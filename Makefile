# Damselfly — peer-to-peer distribution of container images and large files.

SHELL        := /bin/bash
.DEFAULT_GOAL := help

export PATH  := /usr/local/go/bin:$(PATH)
# disable_libutp: anacrolix/torrent (supernode/bt) uses its pure-Go uTP, not
# the cgo libutp, so every build is the same with or without cgo.
export GOFLAGS := $(strip $(GOFLAGS) -tags=disable_libutp)
GO           ?= go
PKG          := github.com/damselfly/damselfly
VERSION      ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION     ?= $(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
LDFLAGS      := -X $(PKG)/pkg/version.version=$(VERSION) -X $(PKG)/pkg/version.revision=$(REVISION)
BINARIES     := $(patsubst %/main.go,%,$(wildcard supernode/main.go dfget/main.go dfdaemon/main.go registry-cache/main.go))
TEST_TIMEOUT ?= 12m
FUZZTIME     ?= 60s

##@ Build

.PHONY: build
build: ## Build every binary into bin/
	@mkdir -p bin
	@for b in $(BINARIES); do \
		echo "go build bin/$$b"; \
		$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/$$b ./$$b || exit 1; \
	done

IMAGE        ?= damselfly:$(VERSION)

.PHONY: image
image: ## Build the OCI image with the four binaries (docker, offline: FROM scratch); IMAGE= names it; prints the reference last
	@./hack/image.sh '$(IMAGE)' '$(LDFLAGS)'

.PHONY: deps
deps: ## Download Go modules
	$(GO) mod download

##@ Run

.PHONY: run
run: build ## Offline: an embedded registry, a supernode and a dfdaemon on loopback, in the foreground (UPSTREAM= for a real registry); data under ./.damselfly
	./hack/run.sh

.PHONY: demo
demo: ## Offline demo: embedded registry, supernode, three dfdaemons pulling one image at once
	$(GO) run ./hack/demo $(DEMO_FLAGS)

##@ Test

.PHONY: test
test: deps ## Vet, then every test (and every fuzz target's saved corpus) with the race detector
	$(GO) vet ./...
	$(GO) test -race -timeout $(TEST_TIMEOUT) ./...

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME (default 60s) each; stops at the first crasher
	GO=$(GO) ./hack/fuzz.sh $(FUZZTIME)

.PHONY: test-short
test-short: ## Unit tests only (skips in-process end-to-end tests)
	$(GO) test -short ./...

.PHONY: e2e
e2e: ## Real dockerd, containerd, crane and skopeo pull through dfdaemon, then the dashboard in chromium (root; installs what is missing)
	./hack/e2e-runtimes.sh
	$(MAKE) ui-test
	$(MAKE) e2e-lazy

.PHONY: e2e-lazy
e2e-lazy: ## Lazy pulling: an eStargz image through dfdaemon by the stargz snapshotter (own module hack/stargz) under containerd, run with ctr (root, /dev/fuse; installs what is missing)
	cd hack/stargz && $(GO) test -count=1 ./...
	./hack/e2e-lazy.sh

CHROMIUM ?= /usr/bin/chromium

.PHONY: ui-test
ui-test: ## The dashboard in headless chromium (chromedp, own module hack/uitest; installs Debian's chromium if missing); UITEST_SCREENSHOTS=docs refreshes the screenshots
	@test -x $(CHROMIUM) || { echo "installing chromium"; apt-get update -qq && apt-get install -y -qq chromium; }
	cd hack/uitest && CHROMIUM=$(CHROMIUM) UITEST_SCREENSHOTS=$(if $(UITEST_SCREENSHOTS),$(abspath $(UITEST_SCREENSHOTS))) $(GO) test -count=1 -timeout 5m ./...

HELM_VERSION ?= v3.22.0

.PHONY: chart
chart: ## Lint the Helm chart (--strict) and decode every rendered object into its Kubernetes type (installs helm into bin/tools)
	@test -x bin/tools/helm || GOBIN=$(CURDIR)/bin/tools $(GO) install helm.sh/helm/v3/cmd/helm@$(HELM_VERSION)
	bin/tools/helm lint --strict charts/damselfly
	cd hack/charttest && HELM=$(CURDIR)/bin/tools/helm $(GO) test -count=1 ./...

.PHONY: bench
bench: build ## Swarm suite: an image pulled on N nodes direct, via a pull-through cache and via dfdaemons (BENCH_FLAGS, see docs/benchmarks.md)
	$(GO) run ./hack/bench $(BENCH_FLAGS)

.PHONY: bench-lazy
bench-lazy: build ## Byte ranges of cold blobs through dfdaemon vs direct: time to the bytes, origin copies (BENCH_FLAGS, see docs/benchmarks.md)
	$(GO) run ./hack/bench -mode lazy $(BENCH_FLAGS)

.PHONY: bench-torrent
bench-torrent: build ## A torrent seeded by aria2c (capped upload) on N nodes: dfgets through a supernode vs aria2c leechers; needs aria2c, mktorrent (BENCH_FLAGS, see docs/benchmarks.md)
	$(GO) run ./hack/bench -mode torrent $(BENCH_FLAGS)

.PHONY: sim
sim: ## Scale simulator: the real scheduler policy driving thousands of virtual peers (see docs/benchmarks.md)
	$(GO) run ./hack/sim $(SIM_FLAGS)

##@ Quality

.PHONY: lint
lint: ## gofmt, go vet and the import-direction rules
	@bad=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$bad" ]; then echo "gofmt needed:"; echo "$$bad"; exit 1; fi
	$(GO) vet ./...
	./hack/verify-imports.sh

.PHONY: clean
clean: ## Remove build output and local run data
	rm -rf bin .damselfly

.PHONY: help
help: ## Show this help
	@awk 'BEGIN {FS = ":.*##"; printf "Usage: make <target>\n"} /^[a-zA-Z0-9_-]+:.*?##/ { printf "  %-12s %s\n", $$1, $$2 } /^##@/ { printf "\n%s\n", substr($$0, 5) }' $(MAKEFILE_LIST)
