# Two entry points: `make demo` and `make test`. Both create .venv on first use; `make lint` is
# the other check CI runs.
PYTHON ?= python3
VENV   ?= .venv
# A CPU build of torch (it lies on disk on the project's machines); on a GPU machine use
# `make TORCH=torch demo` to take the default CUDA build instead.
TORCH  ?= torch==2.13.0
# SAE-Dashboard 0.8's own classes load our batches in a test. Its metadata pins transformers<4.57
# and transformer-lens 2 (we need 5 and 3), so it cannot sit in pyproject's extras: installed
# without its dependencies (the classes the test imports need only numpy); the test skips without it.
SAEDASHBOARD ?= sae-dashboard==0.8.0
# Idle OpenMP threads sleep instead of spinning: on a busy machine spinning threads made 2-thread
# runs 10-20x slower (benchmarks/omp_wait_policy.py); results are unchanged. The CLI sets the same.
export OMP_WAIT_POLICY ?= PASSIVE
BIN    := $(VENV)/bin
BASE   := $(VENV)/.installed-base
STAMP  := $(VENV)/.installed
# basedpyright (the `typecheck` extra) on top of the dev install: only lint needs it
TYPECHECK_STAMP := $(VENV)/.installed-typecheck

.PHONY: demo test lint typecheck bench clean browser

# What `make demo` needs: torch and the package, without the dev extras (triton alone unpacks to
# ~1 GB and the demo runs on the CPU) and without byte-compiling every installed file (pip's
# compile step was most of the install's time; Python compiles the modules it imports instead).
$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile "$(TORCH)"
	$(BIN)/pip install -q --no-compile -e .
	touch $(BASE)

# The test suite's extras; then everything is byte-compiled, on every core, since test
# subprocesses would otherwise each compile what they import where bytecode is not written.
# Like pip's own compile step, files that are not valid for this Python are passed over
# (torch ships testing/_internal/py312_intrinsics.py, 3.12-only syntax): compileall's exit 1
# for them must not fail the install.
$(STAMP): $(BASE)
	$(BIN)/pip install -q --no-compile -e ".[dev]"
	$(BIN)/pip install -q --no-compile --no-deps "$(SAEDASHBOARD)"
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null || true
	touch $(STAMP)

demo: $(BASE)
	$(BIN)/sae-lens-maira demo

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

# The viewer's browser test needs Debian's chromium; install it where we may (root + apt), else it skips.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    echo "installing chromium for the viewer's browser test"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	      || echo "chromium could not be installed: the browser test will be skipped"; \
	  else echo "no chromium and no root apt-get: the browser test will be skipped"; fi; }

# basedpyright is pyright with node bundled in its wheels (about 75 MB from PyPI, 280 MB installed):
# nothing is fetched when it runs. Kept out of `dev` so `make test` / `make demo` do not carry it.
$(TYPECHECK_STAMP): $(STAMP)
	$(BIN)/pip install -q -e ".[typecheck]"
	touch $(TYPECHECK_STAMP)

# ruff, then pyright's basic mode over the package (about 1 min on 2 cores)
lint: $(TYPECHECK_STAMP)
	$(BIN)/ruff check sae_lens_maira tests benchmarks
	$(BIN)/basedpyright --pythonpath $(BIN)/python

# pyright alone ([tool.pyright] in pyproject.toml: basic mode over sae_lens_maira)
typecheck: $(TYPECHECK_STAMP)
	$(BIN)/basedpyright --pythonpath $(BIN)/python

clean:
	rm -rf $(VENV) build *.egg-info
