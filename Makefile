# traceed — the two commands that do everything on a fresh Debian 12 machine (as root):
#   make run    install build dependencies, build, run the daemon in the foreground
#   make test   install build dependencies, build once (release), run every test
SHELL := /bin/bash
APT_PACKAGES := clang llvm libbpf-dev bpftool gcc libc6-dev linux-libc-dev pkg-config make xz-utils util-linux
CARGO ?= cargo
ARGS ?=

.PHONY: deps build run test lint fmt clean

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing: $$missing"; \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { echo "cargo not found: install a Rust toolchain >= 1.87 (https://rustup.rs), then re-run"; exit 1; }

build: deps
	$(CARGO) build --release --workspace --locked

run: build
	./target/release/traceed $(ARGS)

test: build
	$(CARGO) test --release --workspace --locked

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
