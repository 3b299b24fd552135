# sugar-kernels: `make test` and `make bench` do all set-up themselves (venv, pinned deps, build).
PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-stamp
EXT_STAMP := .stamp-ext
EXT_SOURCES := $(filter-out csrc/_build_config.h,$(wildcard csrc/*.h csrc/*.cpp csrc/*.cu)) setup.py

.PHONY: install test test-fast bench lint format clean

install: $(EXT_STAMP)

$(DEPS_STAMP): requirements-dev.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# Rebuilds only when a source changed (ninja then recompiles only what changed).
$(EXT_STAMP): $(DEPS_STAMP) $(EXT_SOURCES)
	$(VPY) setup.py build_ext --inplace
	$(VPY) -c "import sugar_kernels as sk; print('sugar-kernels build:', sk.build_info())"
	touch $@

test: install
	$(VPY) -m pytest -q tests --ignore=tests/triton_interpret
	TRITON_INTERPRET=1 $(VPY) -m pytest -q tests/triton_interpret

bench: install
	$(VPY) -m benchmarks.run

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEPS_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf build $(EXT_STAMP) sugar_kernels/_C*.so csrc/_build_config.h
