"""Models, structures and runs shared by the real-engine tests (test_lammps_engine, test_openmm_engine)."""

from __future__ import annotations

import numpy as np
import torch
from ase.build import bulk
from conftest import REPO
from omegaconf import OmegaConf

from nnp import NNPCalculator, Potential
from nnp.md import simulate


def cu_model(seed: int = 0) -> Potential:
    """A random SchNet for copper with forces of ~1 eV/Å on a rattled cell (float64)."""
    torch.manual_seed(seed)
    cfg = {"name": "schnet", "n_features": 16, "n_interactions": 2, "n_rbf": 12, "cutoff": 4.5}
    return Potential.build(cfg, [29], atomref=[-3.5], energy_scale=60.0).double()


def organic_model(seed: int = 0, energy_scale: float = 0.1) -> Potential:
    torch.manual_seed(seed)
    cfg = {"name": "schnet", "n_features": 16, "n_interactions": 2, "n_rbf": 12, "cutoff": 4.0}
    return Potential.build(cfg, [1, 6, 8], atomref=[-13.6, -1029.0, -2042.0], energy_scale=energy_scale).double()


def cu_cell(triclinic: bool = False, scale: float = 1.0):
    atoms = bulk("Cu", "fcc", a=3.61 * scale, cubic=True).repeat((3, 3, 3))
    if triclinic:
        shear = np.array([[1.0, 0.0, 0.0], [0.2, 1.0, 0.0], [-0.15, 0.1, 1.0]])
        atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.rattle(0.05, seed=3)
    return atoms


def md_cfg(tmp_path, name: str, *overrides: str):
    """conf/md.yaml with overrides (60 steps of 1 fs at 600 K, a log row every step), without Hydra."""
    base = OmegaConf.load(REPO / "conf/md.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    return OmegaConf.merge(base, OmegaConf.from_dotlist([
        "ckpt=unused", "input=unused", f"output={tmp_path / name}.extxyz", "md.steps=60", "md.timestep_fs=1.0",
        "md.write_interval=10", "md.log_interval=1", "md.temperature_K=600", *overrides,
    ]))


def run_md(tmp_path, atoms, model, name, *overrides):
    """``nnp md``'s loop on a copy of ``atoms``: (final atoms, summary, CSV log rows)."""
    atoms = atoms.copy()
    atoms.calc = NNPCalculator(model)
    summary = simulate(atoms, md_cfg(tmp_path, name, *overrides))
    log = np.loadtxt(tmp_path / f"{name}.csv", delimiter=",", skiprows=1)
    return atoms, summary, log
