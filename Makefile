# nnp: `make demo` (train + evaluate + predict + md on the shipped data), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nnp-installed
# torch is pinned here (constraints.txt), not in pyproject: the package asks for a range.
# PYTHONWARNINGS: setuptools warns about every editable install; nothing for a user to act on.
PIP_INSTALL := PYTHONWARNINGS=ignore $(BIN)/python -m pip install -q -c constraints.txt
DEMO_DIR ?= demo-output

.PHONY: install test test-fast fuzz demo bench bench-recipe lint clean

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

# The data readers' and the model loader's fuzz tests with FUZZ_EXAMPLES random cases per test (`make test` runs a fixed ~1,060).
FUZZ_EXAMPLES ?= 2000
fuzz: $(STAMP)
	NNP_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/python -m pytest -q tests/test_fuzz.py tests/test_fuzz_models.py --hypothesis-show-statistics

demo: $(STAMP)
	DEMO_DIR=$(DEMO_DIR) NNP=$(BIN)/nnp PYTHON=$(BIN)/python bash scripts/demo.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

# Accuracy on held-out molecules, nnp vs TorchANI/SchNetPack, and the recipe's ablation (also a section of `make bench`)
bench-recipe: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --only recipe

lint: $(STAMP)
	$(BIN)/python -m pip install -q ruff && $(BIN)/ruff check nnp tests benchmarks

clean:
	rm -rf $(VENV) $(DEMO_DIR) runs outputs multirun .pytest_cache
