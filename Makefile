# sugar-kernels: `make test` and `make bench` do all set-up themselves (venv, pinned deps, build).
# Each long step first prints how long it takes on the 2-core dev machine (README: "Two commands").
PYTHON ?= python3
BENCH_ARGS ?=
VENV := .venv
VPY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-stamp
EXT_STAMP := .stamp-ext
EXT_SOURCES := $(filter-out csrc/_build_config.h,$(wildcard csrc/*.h csrc/*.cpp csrc/*.cu)) setup.py

.PHONY: install test test-fast bench lint format clean

install: $(EXT_STAMP)

# pip prints one line per package (no progress bars: they are carriage-return noise in a log).
$(DEPS_STAMP): requirements-dev.txt
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	@echo ">>> installing the pinned dependencies into $(VENV) (torch with CUDA, ~3 GB): ~1.5 min with a warm pip cache, longer when downloading"
	$(VPY) -m pip install --progress-bar off -r requirements-dev.txt
	touch $@

# Rebuilds only when a source changed (ninja then recompiles only what changed).
$(EXT_STAMP): $(DEPS_STAMP) $(EXT_SOURCES)
	@echo ">>> building the C++ extension (ninja prints each compile): ~35 s CPU-only, ~1 min with the CUDA kernels, on 2 cores"
	$(VPY) setup.py build_ext --inplace
	$(VPY) -c "import sugar_kernels as sk; print('sugar-kernels build:', sk.build_info())"
	touch $@

test: install
	@echo ">>> test suite on CPU: ~4.5 min on a quiet 2-core machine, up to ~13 min on a shared one (CUDA tests skip without a GPU); then the Triton interpreter tests: ~1 min"
	$(VPY) -m pytest -q --durations=5 tests --ignore=tests/triton_interpret
	TRITON_INTERPRET=1 $(VPY) -m pytest -q --durations=5 tests/triton_interpret

bench: install
	@echo ">>> benchmarks: 12 min on a shared 2-core machine with a cold Inductor cache (the compiled step 8 min of it); BENCH_ARGS=--dry-run runs every step at tiny sizes in ~1 min; report in results/REPORT.md"
	$(VPY) -m benchmarks.run $(BENCH_ARGS)

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEPS_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf build $(EXT_STAMP) sugar_kernels/_C*.so csrc/_build_config.h
