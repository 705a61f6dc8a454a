# Ferry: the two commands of the README's quick start are `make demo` and `make test`.
GO      ?= go
BIN     := bin/ferry
# Inputs each fuzz target tries in `make test` (0 skips fuzzing). A count,
# not a duration: Go 1.26's fuzz coordinator can fail a duration-bounded run
# with a spurious "context deadline exceeded" (golang/go#75804).
FUZZTIME ?= 50000x

.PHONY: build demo test testenv vet unit race fuzz bench image

# The container image deploy/ runs (Dockerfile); IMAGE names it, and
# DOCKER may be podman.
IMAGE  ?= ghcr.io/ferrydr/ferry:latest
DOCKER ?= docker

build:
	$(GO) build -o $(BIN) ./cmd/ferry

image:
	$(DOCKER) build -t $(IMAGE) .

# Runs Ferry end to end on a local three-directory repository, no server needed.
demo: build
	FERRY=$(BIN) bash testenv/demo.sh

# Installs what the tests need (MinIO, etcd, kube-apiserver,
# kube-controller-manager and the CSI snapshot sidecars, built from the Go
# module proxy and cached in ~/.cache/ferry), then runs vet, every test, the
# tests of the packages that run goroutines of their own again under the
# race detector, and each fuzz target briefly.
test: testenv vet unit race fuzz

testenv:
	$(GO) run ./testenv/cmd/ferry-testenv install

vet:
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) build -o /dev/null ./cmd/ferry # as the Dockerfile builds it: static
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	  if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

unit:
	$(GO) test -count=1 -timeout 40m ./...

# The race detector needs cgo and a C compiler (testenv installs gcc when
# missing). About 7 minutes here, on top of the plain run.
race:
	CGO_ENABLED=1 $(GO) test -race -count=1 -timeout 40m ./chunk/... ./transport/... ./agent/... ./verify/... ./csi/...

fuzz:
	@if [ "$(FUZZTIME)" != "0" ]; then \
	  for pkg in $$($(GO) list ./...); do \
	    for f in $$($(GO) test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	      echo "fuzz $$pkg $$f ($(FUZZTIME))"; \
	      $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -timeout 10m $$pkg >/tmp/ferry-fuzz.log 2>&1 || { cat /tmp/ferry-fuzz.log; exit 1; }; \
	    done; \
	  done; \
	fi

bench:
	$(GO) test -run '^$$' -bench . -benchmem ./perf/
