# traceed — the two commands that do everything on a fresh Debian 12 machine (as root):
#   make run    install build dependencies, build, run the daemon in the foreground
#   make test   install build dependencies, build once (release), run every test
SHELL := /bin/bash
APT_PACKAGES := clang llvm libbpf-dev bpftool gcc libc6-dev linux-libc-dev pkg-config make xz-utils util-linux
CARGO ?= cargo
ARGS ?=

.PHONY: deps build run test lint fmt clean deb check-unit boot-test

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

# The Debian package: target/debian/traceed_<version>-1_amd64.deb, from the
# release binaries of `make build`, checked by lintian (errors fail).
CARGO_DEB_VERSION := 3.8.0
deb: build
	@command -v lintian >/dev/null || { DEBIAN_FRONTEND=noninteractive apt-get install -y -q lintian; }
	@$(CARGO) deb --version 2>/dev/null | grep -q ' $(CARGO_DEB_VERSION)' || $(CARGO) install cargo-deb --version $(CARGO_DEB_VERSION) --locked
	rm -f target/debian/traceed_*.deb
	$(CARGO) deb -p traceed --no-build --strip
	lintian --fail-on error target/debian/traceed_*.deb

# systemd-analyze verify + security exposure (<= 4.0) of the unit.
check-unit: build
	packaging/check-unit.sh target/release/traceed

# Boot a Debian 12 VM with the .deb installed and check the service from inside.
boot-test: deb
	tests/vm/boot.sh

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
