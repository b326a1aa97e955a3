"""Writes an OpenMM module with THIS environment's torch (``make test-openmm`` runs it with the
shipping torch), plus the energy and forces nnp gives, for tests/test_openmm_engine.py to load in
OpenMM's environment (another torch): ``python tests/openmm_export_fixture.py FOLDER``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase.build import bulk

from nnp import NNPCalculator, Potential
from nnp.engines.openmm import export_openmm


def main(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    cfg = {"name": "schnet", "n_features": 16, "n_interactions": 2, "n_rbf": 12, "cutoff": 4.5}
    model = Potential.build(cfg, [8, 29], atomref=[-2.0, -3.5], energy_scale=20.0).double()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
    atoms.numbers[[2, 13]] = 8
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0, 0], [0.15, 1.0, 0], [-0.1, 0.1, 1.0]]), scale_atoms=True)
    atoms.rattle(0.05, seed=5)
    export_openmm(model, atoms, folder / "model_openmm.pt")
    ase.io.write(folder / "system.extxyz", atoms)
    atoms.calc = NNPCalculator(model)
    expected = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces().tolist(), "torch": torch.__version__}
    (folder / "expected.json").write_text(json.dumps(expected))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
