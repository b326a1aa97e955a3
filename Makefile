# nnp: `make demo` (train + evaluate + predict + md on the shipped data), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nnp-installed
# torch is pinned here (constraints.txt), not in pyproject: the package asks for a range.
# PYTHONWARNINGS: setuptools warns about every editable install; nothing for a user to act on.
PIP_INSTALL := PYTHONWARNINGS=ignore $(BIN)/python -m pip install -q -c constraints.txt
DEMO_DIR ?= demo-output

.PHONY: install test test-fast test-torchani fuzz demo bench lint clean

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip >/dev/null
	$(PIP_INSTALL) -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow" -x

# nnp import torchani against TorchANI itself (real network widths, random weights), in the
# benchmark's TorchANI environment (built by `make bench` or `python benchmarks/envs.py`).
test-torchani: $(STAMP)
	$(BIN)/python -c "import sys; sys.path.insert(0, 'benchmarks'); import envs; envs.ensure_torchani(print)"
	NNP_TORCHANI_PYTHON=benchmarks/.venvs/torchani/bin/python $(BIN)/python -m pytest -q tests/test_import_torchani.py

# The data readers' and the model loader's fuzz tests with FUZZ_EXAMPLES random cases per test (`make test` runs a fixed ~1,060).
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	NNP_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz.py tests/test_fuzz_models.py --hypothesis-show-statistics

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) NNP=$(BIN)/nnp PYTHON=$(BIN)/python bash scripts/demo.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/python -m pip install -q ruff && $(BIN)/ruff check nnp tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs outputs multirun .pytest_cache
