# recsvc: `make demo` runs the service with sample data; `make test` runs the tests.
# Both set up what they need on a fresh machine (a .venv with pytest for the tests).
# `make bench` runs the benchmark (BENCH_ARGS=--smoke or --duration S); it measures, never asserts.

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
PYTEST_ARGS ?=
BENCH_ARGS ?=
ARGS ?=

.PHONY: test demo serve worker bench pyz clean

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.pytest-installed: | $(VPY)
	$(VPY) -m pip install --quiet --disable-pip-version-check "pytest>=7"
	touch $@

test: $(VENV)/.pytest-installed
	$(VPY) -m pytest $(PYTEST_ARGS)

demo:  # ARGS="--fresh --port 8080": any flag of `recsvc demo`
	$(PYTHON) -m recsvc demo $(ARGS)

# The single file: python3 dist/recsvc.pyz serve|worker|demo|fetch, from any folder.
pyz:
	$(PYTHON) tools/build_pyz.py dist/recsvc.pyz

serve:
	$(PYTHON) -m recsvc serve

worker:
	$(PYTHON) -m recsvc worker

bench:
	$(PYTHON) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) dist build recsvc-data demo-data .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
