# Lifeboat: `make demo` runs the whole story against the local cloud, `make test` the tests.
# Both install what they need on a fresh Debian 12 machine (as root).

SHELL := /bin/bash
UV := uv
APT_PACKAGES := mmdebstrap systemd-container systemd iproute2 nftables haproxy openssl openssh-client \
                etcd-server postgresql-15 python3-boto3 python3-zstandard curl nginx php-cli php-pgsql \
                chromium chromium-driver
PYTEST_ARGS ?=
N ?= 3
# No network but the package registries: Prefect must not try to send telemetry.
export PREFECT_SERVER_ANALYTICS_ENABLED := false

.PHONY: deps demo test test-unit test-integration test-e2e test-e2e-repeat ci-repeat lint lab-up lab-down bench

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# nginx is here for `nginx -t` in the integration tests only: never a server on the host's :80,
	@# where the lab's load balancers listen.
	@if systemctl is-enabled --quiet nginx 2>/dev/null; then \
	  systemctl disable --quiet nginx; systemctl stop nginx 2>/dev/null || true; fi
	@command -v uv >/dev/null 2>&1 || python3 -m pip install -q uv
	@# Bytecode compiled once here: where PYTHONDONTWRITEBYTECODE is set (it is on this
	@# machine) every command would otherwise compile its ~1,800 modules again (~3 s).
	@$(UV) sync -q --frozen --compile-bytecode

lint: deps
	$(UV) run ruff check .
	$(UV) run ruff format --check .

lab-up: deps
	$(UV) run lifeboat lab up

lab-down: deps
	$(UV) run lifeboat lab down

# The whole story, recorded in a Prefect server that stays up (with its UI and a worker):
# the droplets reach it through the lab gateway, so it listens on every address.
demo: deps
	$(UV) run lifeboat server start --host 0.0.0.0
	$(UV) run lifeboat lab up
	$(UV) run lifeboat lab blocks
	$(UV) run lifeboat up --spec examples/article.yaml
	$(UV) run lifeboat deploy --spec examples/article.yaml --notify custom-webhook/lab
	$(UV) run lifeboat backup --spec examples/article.yaml
	$(UV) run lifeboat drill failover --spec examples/article.yaml --fault power-off --allow-destructive
	$(UV) run lifeboat drill restore --spec examples/article.yaml
	$(UV) run lifeboat status --spec examples/article.yaml
	$(UV) run lifeboat server status --spec examples/article.yaml

# Pure logic: no server, no lab; seconds.
test-unit: deps
	$(UV) run pytest tests/unit -m "not e2e" $(PYTEST_ARGS)

# Real servers on this machine (moto, PostgreSQL, etcd, nginx, HAProxy, Prefect), no lab.
test-integration: deps
	$(UV) run pytest tests/integration -m "not e2e" $(PYTEST_ARGS)

test-e2e: lab-up
	$(UV) run pytest -m e2e $(PYTEST_ARGS)

# Flakiness hunts. The end-to-end tests N times in a row against the lab (stops at the
# first failure); and what CI runs, N times, each on a fresh clone of HEAD (commit first).
test-e2e-repeat: lab-up
	@for i in $$(seq $(N)); do echo "== e2e round $$i/$(N)"; \
	  $(UV) run pytest -m e2e $(PYTEST_ARGS) || exit 1; done

ci-repeat:
	bash .ci/repeat $(N)

# Everything: lint, then unit, integration and end-to-end tests (one pytest run) against a
# fresh lab; the lab is taken down at the end whatever happened.
test: lint
	$(UV) run lifeboat lab up
	$(UV) run pytest $(PYTEST_ARGS); rc=$$?; $(UV) run lifeboat lab down || rc=1; exit $$rc

# Benchmarks print figures; they assert nothing.
bench: lab-up
	$(UV) run python -m bench.lab
	$(UV) run python -m bench.up
	$(UV) run python -m bench.backup
	$(UV) run python -m bench.drill
