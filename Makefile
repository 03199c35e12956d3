# regcache developer entry points. `make run` and `make test` create or reuse .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= config.dev.yaml
# Debian packages the tests drive as real clients.
DEB_TEST_PACKAGES := dnsutils knot-dnsutils openssl curl iproute2 skopeo docker-registry podman apache2-utils nftables systemd debootstrap vagrant chromium

.PHONY: run test lint deb-deps clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/regcache serve --config $(CONFIG)

deb-deps:
	@missing=""; for p in $(DEB_TEST_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	  else echo "warning: missing Debian packages (run as root to install):$$missing"; fi; \
	fi

lint: $(STAMP)
	$(BIN)/ruff check appliance tests bench
	$(BIN)/ruff format --check appliance tests bench
	$(BIN)/mypy appliance

test: $(STAMP) deb-deps lint
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
