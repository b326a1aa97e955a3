"""Energy terms (nnp.terms): coulomb with learned charges, D3(BJ), ZBL.

Each term against its analytic or reference value, smooth through its
switching region; every architecture with all terms on keeps the physics
(finite-difference forces, invariances, size extensivity, NVE, export); the
model file (format 3) stores the terms; bad input is one line.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from conftest import error_line, nnp_cli

from nnp import keys
from nnp.data.collate import atoms_to_sample, collate
from nnp.errors import NNPError
from nnp.potential import Potential
from nnp.terms.coulomb import neutralize
from nnp.terms.ewald import damped_pairs_energy, ewald_energy
from nnp.units import COULOMB_CONSTANT as K_E

DATA = Path(__file__).parent / "data"
SPECIES = [1, 6, 7, 8]
SMALL = {
    "ani": {"name": "ani", "hidden": [8], "radial_shifts": [0.9, 2.0, 3.5], "angular_radial_shifts": [0.9, 2.0], "angular_sections": 2},
    "schnet": {"name": "schnet", "n_features": 8, "n_interactions": 1, "n_rbf": 8},
    "painn": {"name": "painn", "n_features": 8, "n_interactions": 1, "n_rbf": 8},
    "hipnn": {"name": "hipnn", "n_features": 8, "n_interactions": 1, "n_atom_layers": 1, "n_sensitivities": 4},
}


def has_dftd3() -> bool:
    try:
        import dftd3.interface  # noqa: F401
    except ImportError:
        return False
    return True


def all_terms() -> dict:
    terms = {"zbl": {}, "coulomb": {"hidden": [8]}}
    if has_dftd3():  # an extra: make test runs without it
        terms["d3"] = {"functional": "pbe"}
    return terms


def potential(arch: str, terms: dict | None = None, seed: int = 0) -> Potential:
    torch.manual_seed(seed)
    pot = Potential.build(SMALL[arch], SPECIES, [-0.5, -38.0, -54.0, -75.0], terms=all_terms() if terms is None else terms)
    return pot.double().eval()


def batch_of(frames) -> dict[str, torch.Tensor]:
    b = collate([atoms_to_sample(a, k) for k, a in enumerate(frames)])
    return {k: (v.double() if v.is_floating_point() else v) for k, v in b.items()}


def energy_of(pot, frames) -> torch.Tensor:
    return pot(batch_of(frames), compute_forces=False)[keys.ENERGY].detach()


def ethanol() -> Atoms:
    a = molecule("CH3CH2OH")
    a.rattle(0.05, seed=3)
    return a


# ------------------------------------------------------------------ coulomb


def test_two_point_charges_and_a_neutral_cluster_match_coulombs_law():
    pos = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 7.3]], dtype=torch.float64)
    pairs = torch.tensor([[0, 1], [1, 0]])
    idx = torch.zeros(2, dtype=torch.long)
    e = K_E * damped_pairs_energy(torch.tensor([1.0, -2.0], dtype=torch.float64), pos, pairs, idx, 1, 1.0)
    assert float(e) == pytest.approx(K_E * -2.0 / 7.3, rel=1e-12)  # erf(7.3) = 1 in double
    # damped at short range: finite and below the bare 1/r
    close = pos.clone()
    close[1, 2] = 0.3
    e_close = float(K_E * damped_pairs_energy(torch.tensor([1.0, 1.0], dtype=torch.float64), close, pairs, idx, 1, 1.0))
    assert 0 < e_close < K_E / 0.3 and e_close == pytest.approx(K_E * math.erf(0.3) / 0.3)
    # a neutral cluster of 6 charges vs the plain pair sum
    rng = np.random.default_rng(0)
    xyz = rng.uniform(0, 8, (6, 3))
    q = np.array([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    expected = K_E * sum(q[a] * q[b] * math.erf(np.linalg.norm(xyz[a] - xyz[b]) / 0.2) / np.linalg.norm(xyz[a] - xyz[b])
                         for a in range(6) for b in range(a + 1, 6))
    all_pairs = torch.tensor([[a, b] for a in range(6) for b in range(6) if a != b]).T
    got = K_E * damped_pairs_energy(torch.tensor(q), torch.tensor(xyz), all_pairs, torch.zeros(6, dtype=torch.long), 1, 0.2)
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_ewald_gives_the_madelung_energy_of_rock_salt_and_does_not_depend_on_its_splitting():
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    q = torch.tensor([1.0 if z == 11 else -1.0 for z in a.numbers], dtype=torch.float64)
    pos, cell = torch.tensor(a.positions), torch.tensor(a.cell.array)
    e = K_E * ewald_energy(q, pos, cell, 1e-3, 8.0, 1e-8) / 4  # per ion pair
    madelung = 1.747564594633
    assert float(e) == pytest.approx(-K_E * madelung / 2.82, rel=1e-6)
    # damped interaction (sigma = 1 Å) of a charged, random cell: the same at two real-space cutoffs
    rng = np.random.default_rng(1)
    qr = torch.tensor(rng.normal(size=8))
    xr = pos + torch.tensor(rng.normal(scale=0.3, size=(8, 3)))
    e1 = ewald_energy(qr, xr, cell, 1.0, 6.0, 1e-8)
    e2 = ewald_energy(qr, xr, cell, 1.0, 10.0, 1e-10)
    assert float(e1) == pytest.approx(float(e2), abs=1e-6)


def test_charges_sum_to_each_structures_total_charge():
    pot = potential("schnet", {"coulomb": {}})
    frames = [ethanol(), molecule("H2O"), molecule("NH3"), molecule("CH4")]
    for a, charge in zip(frames, (0, 1, -1, 2)):
        a.info["charge"] = charge
    out = pot(batch_of(frames))
    sums = torch.zeros(4, dtype=torch.float64).index_add(0, batch_of(frames)[keys.IDX_M], out[keys.CHARGES].detach())
    assert torch.allclose(sums, torch.tensor([0.0, 1.0, -1.0, 2.0], dtype=torch.float64), atol=1e-12)
    raw = torch.tensor([0.3, 0.1, -0.2, 0.5], dtype=torch.float64)
    q = neutralize(raw, torch.tensor([0, 0, 1, 1]), torch.tensor([2, 2]), torch.tensor([0.0, -1.0], dtype=torch.float64))
    assert torch.allclose(q, torch.tensor([0.1, -0.1, -0.85, -0.15], dtype=torch.float64))


def test_periodic_coulomb_forces_and_stress_are_derivatives_of_its_energy():
    pot = potential("painn", {"coulomb": {"ewald_cutoff": 6.0}})
    a = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    a.numbers[a.numbers == 11] = 7  # elements of the model: N/O "ions" in a rock-salt cell
    a.numbers[a.numbers == 17] = 8
    a.rattle(0.05, seed=2)
    out = pot(batch_of([a]), compute_stress=True)
    assert out[keys.TERM_ENERGY + "coulomb"].abs().item() > 1e-4
    forces, stress = out[keys.FORCES].detach().numpy(), out[keys.STRESS][0].detach().numpy()
    h = 1e-4
    for atom, axis in ((0, 0), (5, 2)):
        b = a.copy()
        b.positions[atom, axis] += h
        c = a.copy()
        c.positions[atom, axis] -= h
        fd = -(energy_of(pot, [b]) - energy_of(pot, [c])).item() / (2 * h)
        assert forces[atom, axis] == pytest.approx(fd, abs=1e-6)
    for i, j in ((0, 0), (0, 1)):
        e = []
        for s in (h, -h):
            strain = np.eye(3)
            strain[i, j] += s
            b = a.copy()
            b.set_cell(a.cell.array @ strain, scale_atoms=True)
            e.append(energy_of(pot, [b]).item())
        assert stress[i, j] == pytest.approx((e[0] - e[1]) / (2 * h) / a.get_volume(), abs=1e-6)


# ---------------------------------------------------------------------- zbl


def zbl_formula(z1: int, z2: int, r: float) -> float:
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = 0.18175 * math.exp(-3.19980 * x) + 0.50986 * math.exp(-0.94229 * x) + 0.28022 * math.exp(-0.40290 * x) + 0.02817 * math.exp(-0.20162 * x)
    return K_E * z1 * z2 / r * phi


def dimer_energies(pot, z1, z2, distances) -> np.ndarray:
    frames = [Atoms([z1, z2], positions=[[0, 0, 0], [0, 0, float(r)]]) for r in distances]
    out = pot(batch_of(frames))
    return out[keys.TERM_ENERGY + "zbl"].detach().numpy(), out[keys.FORCES].detach().numpy()[1::2, 2]


def test_zbl_is_the_universal_screened_repulsion_inside_the_inner_radius():
    pot = potential("ani", {"zbl": {}})
    e, _ = dimer_energies(pot, 6, 8, [0.3, 0.5])  # inner radius 0.5 (0.76 + 0.66) = 0.71 Å
    assert e == pytest.approx([zbl_formula(6, 8, 0.3), zbl_formula(6, 8, 0.5)], rel=1e-10)
    e_far, _ = dimer_energies(pot, 6, 8, [1.2])  # beyond the outer radius 1.14 Å
    assert e_far[0] == 0.0


def test_zbl_and_damped_coulomb_are_smooth_through_their_switching_regions():
    pot = potential("schnet", {"zbl": {}})
    r = np.linspace(0.55, 1.25, 141)  # C-O switch 0.71 .. 1.14 Å
    e, f = dimer_energies(pot, 6, 8, r)
    assert np.isfinite(f).all()
    fd = -np.gradient(e, r)
    assert np.abs(fd[1:-1] - f[1:-1]).max() < 1e-2 * np.abs(f).max()  # force = -dE/dr through the switch
    assert np.abs(np.diff(e)).max() < 0.05 * (e.max() - e.min())  # no jumps
    # the damped Coulomb pair energy: smooth with a finite slope down to r -> 0
    rr = torch.linspace(1e-3, 3.0, 200, dtype=torch.float64, requires_grad=True)
    phi = torch.erf(rr) / rr
    (grad,) = torch.autograd.grad(phi.sum(), rr)
    assert torch.isfinite(grad).all() and grad.abs().max() < 1.0


# ----------------------------------------------------------------------- d3


def test_d3_energy_forces_and_stress_match_the_dftd3_package():
    pytest.importorskip("dftd3")
    from ase.units import Bohr, Hartree
    from dftd3.interface import DispersionModel, RationalDampingParam

    pot = potential("ani", {"d3": {"functional": "pbe"}})
    a = ethanol()
    ref = DispersionModel(a.numbers, a.positions / Bohr).get_dispersion(RationalDampingParam(method="pbe"), grad=True)
    out = pot(batch_of([a]))
    assert out[keys.TERM_ENERGY + "d3"].item() == pytest.approx(ref["energy"] * Hartree, abs=1e-6)
    # the package's own gradient, as forces through autograd (the model's share subtracted)
    no_d3 = potential("ani", {})
    d3_forces = (out[keys.FORCES] - no_d3(batch_of([a]))[keys.FORCES]).detach().numpy()
    assert np.allclose(d3_forces, -ref["gradient"] * Hartree / Bohr, atol=1e-8)
    # stress of a periodic cell: finite differences of the energy under strain
    cell = bulk("C", "diamond", a=3.57)
    out = pot(batch_of([cell]), compute_stress=True)
    h, e = 1e-5, []
    for s in (h, -h):
        b = cell.copy()
        b.set_cell(cell.cell.array * (1 + s), scale_atoms=True)
        e.append(energy_of(pot, [b]).item())
    assert np.trace(out[keys.STRESS][0].detach().numpy()) / 3 == pytest.approx((e[0] - e[1]) / (2 * h) / 3 / cell.get_volume(), abs=1e-7)


def test_d3_not_in_the_labels_is_left_out_while_fitting_and_added_at_inference():
    pytest.importorskip("dftd3")
    pot = potential("schnet", {"d3": {"functional": "pbe", "in_labels": False}})
    a = ethanol()
    e_inference = energy_of(pot, [a])
    pot.fitting = True
    out = pot(batch_of([a]), compute_forces=False)
    assert keys.TERM_ENERGY + "d3" not in out
    pot.fitting = False
    d3 = pot(batch_of([a]), compute_forces=False)[keys.TERM_ENERGY + "d3"].item()
    assert (e_inference - out[keys.ENERGY].detach()).item() == pytest.approx(d3, abs=1e-12) and d3 < 0


# ------------------------------------------- every architecture, all terms on


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_every_architecture_with_all_terms_keeps_the_physics(arch):
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    from nnp.calculator import NNPCalculator

    pot = potential(arch)
    a = ethanol()
    a.positions[1] = a.positions[0] + 0.75 * (a.positions[1] - a.positions[0]) / np.linalg.norm(a.positions[1] - a.positions[0])
    out = pot(batch_of([a]))
    assert out[keys.TERM_ENERGY + "zbl"].item() > 0  # a compressed C-C bond: inside the switch
    forces = out[keys.FORCES].detach().numpy()
    h = 1e-5
    for atom, axis in ((0, 0), (1, 2), (4, 1)):
        b, c = a.copy(), a.copy()
        b.positions[atom, axis] += h
        c.positions[atom, axis] -= h
        assert forces[atom, axis] == pytest.approx(-(energy_of(pot, [b]) - energy_of(pot, [c])).item() / (2 * h), abs=1e-6)
    # invariances: translation, rotation, permutation of like atoms
    moved = a.copy()
    moved.rotate(37, (1, 2, 3), center=(0, 0, 0))
    moved.translate((3.0, -1.0, 2.0))
    perm = a[[0, 1, 2, 4, 3, 5, 6, 7, 8]]  # two hydrogens swapped
    e = energy_of(pot, [a, moved, perm]).numpy()
    assert e[1] == pytest.approx(e[0], abs=1e-9) and e[2] == pytest.approx(e[0], abs=1e-9)
    # size extensivity: two neutral copies 1000 Å apart (one rotated) = twice one
    far = moved.copy()
    far.translate((1000.0, 0, 0))
    assert energy_of(pot, [a + far]).item() == pytest.approx(2 * e[0], abs=1e-6)
    # NVE with every term: the total energy is conserved
    a = ethanol()
    a.calc = NNPCalculator(pot)
    MaxwellBoltzmannDistribution(a, temperature_K=300, rng=np.random.default_rng(0))
    totals = []
    dyn = VelocityVerlet(a, timestep=0.1 * units.fs)
    for _ in range(6):
        dyn.run(5)
        totals.append(a.get_total_energy())
    assert np.ptp(totals) < 2e-3 * max(1.0, a.get_kinetic_energy())


@pytest.mark.parametrize("arch", sorted(SMALL))
def test_export_round_trip_with_coulomb_and_zbl(arch, tmp_path):
    from nnp.export import export_potential, load_exported

    pot = potential(arch, {"zbl": {}, "coulomb": {"hidden": [8], "ewald_cutoff": 6.0}})
    cell = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    cell.numbers[:] = [7, 8] * 4
    frames = [ethanol(), cell]
    frames[0].info["charge"] = 1
    export_potential(pot, tmp_path / "m.ts")
    scripted = load_exported(tmp_path / "m.ts")
    b = batch_of(frames)
    ref, got = pot(b, compute_stress=True), scripted(b, compute_stress=True)
    for key in (keys.ENERGY, keys.FORCES, keys.CHARGES):
        assert torch.allclose(ref[key], got[key], atol=1e-10), key
    assert torch.allclose(ref[keys.STRESS][1], got[keys.STRESS][1], atol=1e-10)


def test_models_with_d3_are_refused_at_export_in_one_line(tmp_path):
    pytest.importorskip("dftd3")
    from nnp.export import export_potential

    with pytest.raises(NNPError, match="d3 term.*cannot be exported"):
        export_potential(potential("schnet", {"d3": {}}), tmp_path / "m.ts")
    assert not (tmp_path / "m.ts").exists()


# ----------------------------------------------------------- model file v3


def test_model_file_version_3_stores_the_terms(tmp_path):
    pot = potential("hipnn", all_terms())
    pot.save(tmp_path / "m.pt")
    payload = torch.load(tmp_path / "m.pt", weights_only=True)
    assert payload["version"] == 3 and sorted(payload["terms"]) == sorted(all_terms())
    back = Potential.load(tmp_path / "m.pt").double()
    a = ethanol()
    ref, got = pot(batch_of([a])), back(batch_of([a]))
    assert torch.allclose(ref[keys.ENERGY], got[keys.ENERGY]) and torch.allclose(ref[keys.CHARGES], got[keys.CHARGES])
    # the shipped version-3 fixture (an ANI with zbl and coulomb) loads and gives charges
    v3 = Potential.load(DATA / "model_v3.pt").double()
    assert [t.name for t in v3.terms] == ["zbl", "coulomb"]
    out = v3(batch_of([a]))
    assert torch.isfinite(out[keys.FORCES]).all() and abs(out[keys.CHARGES].sum().item()) < 1e-5


def test_calculator_gives_charges_and_takes_the_total_charge():
    from nnp.calculator import NNPCalculator

    a = molecule("H2O")
    a.info["charge"] = -1
    a.calc = NNPCalculator(potential("painn", {"coulomb": {}}))
    assert a.get_charges().sum() == pytest.approx(-1.0, abs=1e-10) and a.get_dipole_moment().shape == (3,)
    a.info["charge"] = 0.5
    with pytest.raises(NNPError, match=r"atoms.info\['charge'\] = 0.5.*whole number"):
        a.get_potential_energy()


# ---------------------------------------------------------------- bad input


def test_bad_term_input_is_one_line(monkeypatch, capsys, tmp_path, tiny_h5):
    base = ["train", "data=demo", f"data.path={tiny_h5}", "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'run'}"]
    code, text = nnp_cli(monkeypatch, capsys, *base, "terms=[coulmb]")
    line = error_line(text)
    assert code == 2 and "coulmb" in line and "coulomb, d3, zbl" in line
    code, text = nnp_cli(monkeypatch, capsys, *base, "terms=[coulomb]", "data.charge_key=charge")
    assert code == 2 and "no dataset 'charge'" in error_line(text)
    if has_dftd3():
        code, text = nnp_cli(monkeypatch, capsys, *base, "terms=[d3]", "terms.d3.functional=pbe0x")
        assert code == 2 and "terms.d3.functional=pbe0x" in error_line(text)
    code, text = nnp_cli(monkeypatch, capsys, *base, "terms=[zbl]", "loss.dipole_weight=1")
    assert code == 2 and "add terms=[coulomb]" in error_line(text)
    assert not (tmp_path / "run" / "model.pt").exists()


def test_a_non_integer_total_charge_is_one_line(monkeypatch, capsys, tmp_path):
    import ase.io

    pot = potential("schnet", {"coulomb": {}}).float()
    pot.save(tmp_path / "m.pt")
    a = molecule("H2O")
    a.info["charge"] = 0.5
    b = molecule("NH3")
    b.info["charge"] = 1
    ase.io.write(tmp_path / "good.extxyz", [molecule("H2O"), b])
    code, _ = nnp_cli(monkeypatch, capsys, "predict", f"ckpt={tmp_path / 'm.pt'}", f"input={tmp_path / 'good.extxyz'}", f"output={tmp_path / 'good_out.extxyz'}")
    assert code == 0
    predicted = ase.io.read(tmp_path / "good_out.extxyz", ":")
    assert [round(float(f.get_charges().sum()), 5) for f in predicted] == [0.0, 1.0]
    assert "energy_coulomb" in predicted[1].info
    ase.io.write(tmp_path / "in.extxyz", [molecule("NH3"), a])
    code, text = nnp_cli(monkeypatch, capsys, "predict", f"ckpt={tmp_path / 'm.pt'}", f"input={tmp_path / 'in.extxyz'}", f"output={tmp_path / 'out.extxyz'}")
    assert code == 2 and "structure 1: atoms.info['charge'] = 0.5" in error_line(text)
    assert not (tmp_path / "out.extxyz").exists()


def test_hdf5_total_charges_and_dipoles_reach_the_batch(tmp_path, tiny_h5):
    import shutil

    import h5py

    from nnp.data import open_dataset

    path = shutil.copy(tiny_h5, tmp_path / "charged.h5")
    with h5py.File(path, "a") as f:
        for k, name in enumerate(sorted(f)):
            rows = f[name]["coordinates"].shape[0]
            f[name]["charge"] = np.full(rows, float(k % 3 - 1))
            f[name]["dipole"] = np.tile([0.1 * k, 0.0, -0.2], (rows, 1))
    cfg = {"format": "hdf5", "path": str(path), "energy_key": "gfn2.energy", "forces_key": "gfn2.forces", "group_key": "smiles",
           "charge_key": "charge", "dipole_key": "dipole"}
    ds = open_dataset(cfg)
    batch = collate(ds.__getitems__([0, 15, 59]))
    assert batch[keys.TOTAL_CHARGE].tolist() == [-1.0, 0.0, 1.0]
    assert batch[keys.DIPOLE].shape == (3, 3) and batch[keys.DIPOLE][1, 0].item() == pytest.approx(0.1)
    with h5py.File(path, "a") as f:
        f[sorted(f)[2]]["charge"][3] = 0.5
    with pytest.raises(NNPError, match="structure 23: total charge 'charge' = 0.5"):
        open_dataset(cfg)
