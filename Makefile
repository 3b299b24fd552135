# sugar-kernels: `make test` and `make bench` do all set-up themselves (venv, pinned deps, build).
# Each long step first prints how long it takes on the 2-core dev machine (README: "Two commands").
PYTHON ?= python3
BENCH_ARGS ?=
VENV := .venv
VPY := $(VENV)/bin/python
DEPS_STAMP := $(VENV)/.deps-stamp
EXT_STAMP := .stamp-ext
EXT_SOURCES := $(filter-out csrc/_build_config.h,$(wildcard csrc/*.h csrc/*.cpp csrc/*.cu)) setup.py

# The GPU machines' image: Python 3.12, torch 2.11.0, triton 3.6.0 (requirements-torch2.11.txt).
# `make test-torch2.11` builds (CUDA for sm_90, as there) and runs the CPU suite with them.
PYTHON312 ?= $(shell for p in python3.12 $$HOME/.pyenv/versions/3.12*/bin/python3.12 \
	/usr/local/bin/python3.12 /usr/bin/python3.12; do "$$p" -c "" 2>/dev/null && echo "$$p" && break; done)
VENV211 := .venv-torch211
VPY211 := $(VENV211)/bin/python
DEPS211_STAMP := $(VENV211)/.deps-stamp
EXT211_STAMP := .stamp-ext-torch211

.PHONY: install test test-torch2.11 bench lint format clean

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

$(DEPS211_STAMP): requirements-torch2.11.txt
	@test -n "$(PYTHON312)" || { echo "make test-torch2.11 needs Python 3.12 (set PYTHON312=...)"; exit 1; }
	test -x $(VPY211) || $(PYTHON312) -m venv $(VENV211)
	@echo ">>> installing torch 2.11.0 / triton 3.6.0 into $(VENV211): ~1.5 min with a warm pip cache"
	$(VPY211) -m pip install --progress-bar off -r requirements-torch2.11.txt
	touch $@

# Its own extension file (_C.cpython-312-*.so) and build folder, beside the main build's.
$(EXT211_STAMP): $(DEPS211_STAMP) $(EXT_SOURCES)
	@echo ">>> building the C++ extension against torch 2.11 (CUDA for sm_90): ~2 min on 2 cores"
	TORCH_CUDA_ARCH_LIST=9.0 $(VPY211) setup.py build_ext --inplace
	$(VPY211) -c "import sugar_kernels as sk; print('sugar-kernels build:', sk.build_info())"
	touch $@

test-torch2.11: $(EXT211_STAMP)
	@echo ">>> test suite with torch 2.11 on CPU: about as long as make test"
	$(VPY211) -m pytest -q --durations=5 tests --ignore=tests/triton_interpret
	TRITON_INTERPRET=1 $(VPY211) -m pytest -q --durations=5 tests/triton_interpret

bench: install
	@echo ">>> benchmarks: ~10 min on a quiet 2-core machine (compiled-model benchmark ~4-8 min of it), more on a shared one; each step prints its progress; report in results/REPORT.md"
	$(VPY) -m benchmarks.run $(BENCH_ARGS)

lint: $(DEPS_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(DEPS_STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf build $(EXT_STAMP) $(EXT211_STAMP) sugar_kernels/_C*.so csrc/_build_config.h
