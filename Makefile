# posexplorer: every target sets itself up on a fresh clone (Python 3.10+, Debian, root for apt).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
STAMP := $(VENV)/.installed
PORT ?= 8000
APP_PORT ?= 5006

.PHONY: setup serve test site docs lab bench readme check chromium clean lock
.DEFAULT_GOAL := test

# The CPU build of torch is installed first and pinned, so that no range below pulls a CUDA build.
# Everything else comes from requirements.lock, so a fresh clone tests exactly what main was tested with. pip puts the
# local CPU build of torch in first (uv does not look on this disk); uv then keeps it, since 2.13.0+cpu satisfies the pin.
$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip uv==0.13.9
	$(PY) -m pip install -q torch==2.13.0
	$(BIN)/uv pip install -q --python $(PY) -c requirements.lock -e '.[dev]'  # uv: the same pins, seconds instead of minutes
	touch $@

KERNEL := $(VENV)/share/jupyter/kernels/posexplorer/kernel.json

# The project's Jupyter kernel ("posexplorer": .venv's python), which the notebooks name in their kernelspec.
$(KERNEL): $(STAMP)
	$(PY) -m ipykernel install --sys-prefix --name posexplorer --display-name "posexplorer (.venv)" >/dev/null

setup: $(STAMP) $(KERNEL)

# Upgrade the pinned tools on purpose (then run make test, and commit the lock on its own).
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv && .lock-venv/bin/pip install -q --upgrade pip
	.lock-venv/bin/pip install -q torch==2.13.0 && .lock-venv/bin/pip install -q -e '.[dev]'
	{ sed -n '1,2p' requirements.lock; .lock-venv/bin/pip freeze --exclude-editable | sed 's/^torch==\(.*\)+cpu/torch==\1/'; } > requirements.lock.new
	mv requirements.lock.new requirements.lock && rm -rf .lock-venv

# Debian's Chromium for the browser tests (never `playwright install`: it downloads a browser).
chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# MathJax, served from _docs so that the pages make no request off 127.0.0.1.
.site-deps/node_modules/mathjax/es5/tex-chtml.js:
	npm install --silent --no-audit --no-fund --prefix .site-deps mathjax@3

# The notebooks are the source: they must be clean, and the library exported from them.
check: setup
	@sums() { find nbs posexplorer -name '*.ipynb' -o -name '*.py' -o -name _quarto.yml | grep -v __pycache__ | sort | xargs sha1sum | sha1sum; }; \
	before=$$(sums); $(BIN)/nbdev-clean >/dev/null; $(PY) tools/export.py; after=$$(sums); \
	if [ "$$before" != "$$after" ]; then git status --short nbs posexplorer; \
	  echo "error: notebooks were not clean or posexplorer/ (or nbs/_quarto.yml's sidebar) was not exported from them; run 'make check' (nbdev-clean, tools/export.py) and commit"; exit 1; fi
	@echo "notebooks clean, library in step"

# Executes every notebook (nbdev-test's skip rule; a failing cell fails it, naming notebook and cell), cached by content
# in .jupyter_cache/ (the code cells + everything under posexplorer/): a rebuild with nothing changed runs nothing.
# A notebook's outputs also go to site-cache/ (committed), keyed by its code cells and those inputs, never by path or
# time: a fresh clone whose site-cache/ is up to date executes nothing; a change re-executes the notebooks it touches.
site: setup .site-deps/node_modules/mathjax/es5/tex-chtml.js
	$(PY) tools/build_site.py --out _docs

# `site` runs every notebook once (a failing cell fails it, naming the cell); pytest then runs the tests and opens
# every page in Chromium. Two workers on two cores get one torch thread each: two threads each made them spin against
# each other (the unit tests took 107 s instead of 71 s). Running the unit tests beside the site build made both slower.
test: setup chromium check site
	OMP_NUM_THREADS=1 TRITON_INTERPRET=1 $(BIN)/pytest -n 2 -q tests

# The docs on $(PORT) and the explorer app on $(APP_PORT); Ctrl-C stops both.
serve: setup site
	@echo "posexplorer docs on http://127.0.0.1:$(PORT), app on http://127.0.0.1:$(APP_PORT)/app (Ctrl-C to stop)"
	$(BIN)/posexplorer serve --port $(APP_PORT) & APP=$$!; trap "kill $$APP" EXIT INT TERM; \
	$(PY) -m http.server $(PORT) --bind 127.0.0.1 --directory _docs

docs: setup
	@if command -v quarto >/dev/null; then $(BIN)/nbdev-docs; else \
	  echo "nbdev-docs needs the Quarto binary, which is not installed: get it from https://quarto.org/docs/get-started/"; \
	  echo "(or 'pip install quarto-cli' where GitHub is reachable). 'make site' builds the same pages offline into _docs/."; exit 1; fi

lab: setup
	$(BIN)/jupyter lab --ip 127.0.0.1 --notebook-dir nbs $(LAB_FLAGS)

# As root (the Makefile's apt steps expect it) Jupyter refuses to start without --allow-root. A notebook opens on the
# posexplorer kernel: its kernelspec names it (tools/set_kernelspec.py), and it is the default for new notebooks.
LAB_FLAGS = --MappingKernelManager.default_kernel_name=posexplorer $(if $(filter 0,$(shell id -u)),--allow-root,)

bench: setup chromium
	$(BIN)/posexplorer bench
	$(BIN)/posexplorer bench --attention
	$(PY) -c "from posexplorer.tools.app import bench_updates; bench_updates()"
	$(PY) tools/bench_app.py

# README.md is generated from nbs/index.ipynb; its figure is a snapshot of the RoPE page's first figure.
readme: site chromium
	$(PY) tools/snapshot.py _docs/classics/rope.html 0 nbs/images/rope_decay.png
	$(PY) tools/build_readme.py

clean:
	rm -rf _docs _proc .site-deps .jupyter_cache test-artifacts
