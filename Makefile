# Two commands set everything up on a fresh Debian 12 machine: `make demo` and `make test`.
PY ?= .venv/bin/python
APT_PACKAGES := containerd runc docker-registry busybox-static buildah mmdebstrap

.PHONY: deps venv bench-venv k8s-assets kserve-assets chart-tools proto lint test test-unit demo bench clean

deps: venv ## system packages (root) and the Python environment
	@command -v containerd >/dev/null && command -v docker-registry >/dev/null && command -v runc >/dev/null \
	  && test -x /usr/bin/busybox && command -v buildah >/dev/null && command -v mmdebstrap >/dev/null \
	  || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(APT_PACKAGES); }

venv: .venv/.installed
.venv/.installed: pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q -U pip
	.venv/bin/pip install -q -e '.[dev]'
	touch $@

bench-venv: .venv/.bench-installed ## the Python environment plus what bench/ alone needs (psutil)
.venv/.bench-installed: .venv/.installed
	.venv/bin/pip install -q -e '.[dev,bench]'
	touch $@

k8s-assets: ## kube-apiserver, etcd, kubectl … for the integration tests (cached after the first build)
	bash hack/k8s-assets.sh

kserve-assets: ## KServe's controller manager, CRDs, ConfigMap and webhooks at a pinned release (cached)
	bash hack/kserve-assets.sh

chart-tools: ## helm and promtool at pinned releases, for the chart and alert rule tests (cached)
	bash hack/chart-tools.sh

proto: venv ## regenerate the CRI stubs from proto/
	bash hack/gen-proto.sh

lint: venv
	.venv/bin/ruff check prefetcher tests bench hack
	.venv/bin/mypy
	.venv/bin/lint-imports --no-cache --no-logo

test: deps k8s-assets kserve-assets chart-tools lint ## the whole suite: lint, types, unit, integration against real components
	KUBEBUILDER_ASSETS=$$(bash hack/k8s-assets.sh --print-dir) .venv/bin/pytest -p no:cacheprovider tests

test-unit: venv
	.venv/bin/pytest -q tests/unit

demo: deps ## the agent on an embedded default: private registry + containerd, a sample modelcar, plan and result
	$(PY) hack/demo.py

bench: deps bench-venv k8s-assets kserve-assets ## each prints its figures and the ratio to a baseline measured in the same run
	$(PY) bench/planner_bench.py
	$(PY) bench/idle_rss.py
	$(PY) bench/pull_overhead.py
	$(PY) bench/warm_cold.py
	$(PY) bench/scale_from_zero.py
	$(PY) bench/webhook_latency.py
	$(PY) bench/webhook_cpu.py
	$(PY) bench/isvc_scale.py
	$(PY) bench/fleet_pull.py
