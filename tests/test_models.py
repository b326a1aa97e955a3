"""Physics checks for every architecture (ani, schnet, painn, hipnn).

Small widths keep the matrix fast; the shipped configs (full size) are
checked by building them. Energies in eV, lengths in Å.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import molecule
from omegaconf import OmegaConf

from nnp import keys
from nnp.data import collate, open_dataset
from nnp.data.collate import atoms_to_sample
from nnp.data.statistics import fit_atomref
from nnp.errors import NNPError
from nnp.export import export_potential, exported_metadata, load_exported
from nnp.models import MODELS, build_model
from nnp.potential import Potential

ROOT = Path(__file__).resolve().parents[1]
NAMES = ["ani", "schnet", "painn", "hipnn"]
SPECIES = [1, 6, 7, 8]
ATOMREF = [-0.5, -1.0, -1.5, -2.0]
SMALL = {
    "ani": {"name": "ani", "hidden": [16, 16]},
    "schnet": {"name": "schnet", "n_features": 16, "n_interactions": 2, "n_rbf": 12},
    "painn": {"name": "painn", "n_features": 16, "n_interactions": 2, "n_rbf": 8},
    "hipnn": {"name": "hipnn", "n_features": 16, "n_interactions": 2, "n_atom_layers": 2, "n_sensitivities": 8},
}


def make_potential(name: str, dtype: torch.dtype = torch.float32, seed: int = 0, **overrides) -> Potential:
    torch.manual_seed(seed)
    pot = Potential.build({**SMALL[name], **overrides}, SPECIES, atomref=ATOMREF, energy_scale=0.7)
    return pot.to(dtype)


def batch_of(structures: list[Atoms], dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    batch = collate([atoms_to_sample(a, k) for k, a in enumerate(structures)])
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in batch.items()}


def ethanol() -> Atoms:
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    return atoms


def acetamide() -> Atoms:
    atoms = molecule("CH3CONH2")
    atoms.rattle(0.05, seed=2)
    return atoms


def evaluate(pot: Potential, structures: list[Atoms], dtype=torch.float32, stress: bool = False):
    out = pot(batch_of(structures, dtype), compute_stress=stress)
    return {k: v.detach() for k, v in out.items()}


def random_rotation(seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


# --------------------------------------------------------------- symmetry
@pytest.mark.parametrize("name", NAMES)
def test_rotation_translation_permutation_invariance(name):
    pot = make_potential(name)
    ref_atoms = acetamide()
    ref = evaluate(pot, [ref_atoms])
    e0, f0 = ref[keys.ENERGY], ref[keys.FORCES]
    assert torch.isfinite(e0).all() and torch.isfinite(f0).all()
    tol = dict(rtol=1e-5, atol=1e-4)

    rot = random_rotation(3)
    moved = ref_atoms.copy()
    moved.positions = ref_atoms.positions @ rot.T + np.array([3.1, -7.4, 12.0])
    out = evaluate(pot, [moved])
    torch.testing.assert_close(out[keys.ENERGY], e0, **tol)
    # forces rotate with the structure (equivariance of the gradient)
    torch.testing.assert_close(out[keys.FORCES], f0 @ torch.as_tensor(rot.T, dtype=f0.dtype), **tol)

    perm = np.arange(len(ref_atoms))
    h = np.flatnonzero(ref_atoms.numbers == 1)
    perm[h] = h[::-1]  # swap like atoms (hydrogens)
    out = evaluate(pot, [ref_atoms[perm]])
    torch.testing.assert_close(out[keys.ENERGY], e0, **tol)
    torch.testing.assert_close(out[keys.FORCES], f0[torch.as_tensor(perm)], **tol)


# ---------------------------------------------------------- forces, float64
@pytest.mark.parametrize("name", NAMES)
def test_forces_match_finite_differences_float64(name):
    pot = make_potential(name, torch.float64)
    atoms = ethanol()
    batch = batch_of([atoms], torch.float64)
    out = pot(batch)
    assert out[keys.ENERGY].dtype == torch.float64 and out[keys.FORCES].dtype == torch.float64
    forces = out[keys.FORCES].detach()
    h = 1e-5
    numeric = torch.zeros_like(forces)
    for a in range(len(atoms)):
        for k in range(3):
            plus, minus = dict(batch), dict(batch)
            plus[keys.R] = batch[keys.R].clone()
            plus[keys.R][a, k] += h
            minus[keys.R] = batch[keys.R].clone()
            minus[keys.R][a, k] -= h
            e_plus = pot(plus, compute_forces=False)[keys.ENERGY].sum()
            e_minus = pot(minus, compute_forces=False)[keys.ENERGY].sum()
            numeric[a, k] = -(e_plus - e_minus) / (2 * h)
    torch.testing.assert_close(forces, numeric, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------- cutoff
@pytest.mark.parametrize("name", NAMES)
def test_energy_continuous_across_cutoff(name):
    """A hydrogen moves out of the cutoff of a water's nearest atom: E is
    continuous, forces finite, and just outside E equals the separated sum."""
    pot = make_potential(name, torch.float64)
    rc = pot.cutoff
    water = molecule("H2O")
    anchor = int(np.argmax(water.positions[:, 0]))

    def system(d: float) -> Atoms:
        h = Atoms("H", positions=[water.positions[anchor] + [d, 0.0, 0.0]])
        return water + h

    far = evaluate(pot, [water], torch.float64)[keys.ENERGY] + evaluate(pot, [Atoms("H")], torch.float64)[keys.ENERGY]
    distances = rc + np.linspace(-2e-3, 2e-3, 21)
    energies = []
    for d in distances:
        out = evaluate(pot, [system(float(d))], torch.float64)
        assert torch.isfinite(out[keys.FORCES]).all()
        energies.append(float(out[keys.ENERGY]))
    energies = np.array(energies)
    assert np.abs(np.diff(energies)).max() < 1e-7
    assert abs(energies[-1] - float(far)) < 1e-12  # outside: no interaction at all
    assert abs(energies[0] - float(far)) < 1e-6  # just inside: vanishing interaction
    inside = evaluate(pot, [system(rc - 1e-3)], torch.float64)[keys.FORCES]
    assert inside[-1].abs().max() < 1e-4  # the force on the leaving atom fades out


# ------------------------------------------------------------ extensivity
@pytest.mark.parametrize("name", NAMES)
def test_size_extensive(name):
    pot = make_potential(name)
    a, b = ethanol(), acetamide()
    b.positions += [50.0, 0.0, 0.0]
    e_a = evaluate(pot, [a])[keys.ENERGY]
    e_b = evaluate(pot, [b])[keys.ENERGY]
    both = evaluate(pot, [a + b])
    torch.testing.assert_close(both[keys.ENERGY], e_a + e_b, rtol=1e-5, atol=1e-4)
    # a batch of the two structures gives the same as one at a time
    batched = evaluate(pot, [a, b])
    torch.testing.assert_close(batched[keys.ENERGY], torch.cat([e_a, e_b]), rtol=1e-5, atol=1e-4)


# --------------------------------------------------------------- periodic
def periodic_water() -> Atoms:
    """Two waters in a small triclinic cell (edges < cutoff: many images)."""
    atoms = molecule("H2O") + molecule("H2O")
    atoms.positions[3:] += [1.9, 1.6, 1.4]
    atoms.cell = [[3.6, 0.0, 0.0], [0.4, 3.8, 0.0], [0.3, -0.2, 4.0]]
    atoms.pbc = True
    atoms.rattle(0.05, seed=3)
    return atoms


@pytest.mark.parametrize("name", NAMES)
def test_periodic_supercell_is_extensive(name):
    pot = make_potential(name, torch.float64)
    cell = periodic_water()
    one = evaluate(pot, [cell], torch.float64, stress=True)
    eight = evaluate(pot, [cell.repeat((2, 2, 2))], torch.float64, stress=True)
    torch.testing.assert_close(eight[keys.ENERGY], 8 * one[keys.ENERGY], rtol=1e-10, atol=1e-8)
    torch.testing.assert_close(eight[keys.FORCES], one[keys.FORCES].repeat(8, 1), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(eight[keys.STRESS], one[keys.STRESS], rtol=1e-8, atol=1e-8)
    # an isolated copy of the same atoms has a different energy: images do count
    isolated = cell.copy()
    isolated.pbc = False
    assert abs(float(evaluate(pot, [isolated], torch.float64)[keys.ENERGY] - one[keys.ENERGY])) > 1e-6


# ----------------------------------------------------------------- export
@pytest.mark.parametrize("name", NAMES)
def test_export_round_trip(name, tmp_path):
    from nnp.cli import main as cli_main

    pot = make_potential(name)
    saved = tmp_path / "model.pt"
    pot.save(saved)
    assert cli_main(["export", f"ckpt={saved}", f"output={tmp_path / 'model.ts'}"]) == 0
    exported = load_exported(tmp_path / "model.ts")
    assert exported_metadata(tmp_path / "model.ts")["species"] == SPECIES
    for structures in ([ethanol(), acetamide()], [periodic_water()]):
        batch = batch_of(structures)
        a = pot(dict(batch), compute_stress=True)
        b = exported(dict(batch), compute_stress=True)
        for key in (keys.ENERGY, keys.FORCES, keys.STRESS):
            # stress of a structure without a cell is NaN in both
            torch.testing.assert_close(b[key], a[key].detach(), rtol=1e-6, atol=1e-6, equal_nan=True)
    # float64 export straight from Python
    path = export_potential(pot.to(torch.float64), tmp_path / "model64.ts")
    batch = batch_of([ethanol()], torch.float64)
    torch.testing.assert_close(
        load_exported(path)(dict(batch))[keys.FORCES], pot(dict(batch))[keys.FORCES].detach(), rtol=1e-12, atol=1e-12
    )


def test_export_cli_rejects_bad_input(tmp_path):
    from nnp.export import main

    with pytest.raises(NNPError, match="ckpt"):
        main([])
    with pytest.raises(NNPError, match="not found"):
        main([f"ckpt={tmp_path / 'missing.pt'}"])
    with pytest.raises(NNPError, match="unknown option"):
        main(["ckpt=x.pt", "outptu=y.ts"])
    with pytest.raises(NNPError, match="not found"):
        load_exported(tmp_path / "missing.ts")


# --------------------------------------------------------------- training
@pytest.mark.parametrize("name", NAMES)
def test_short_training_lowers_loss(name):
    data = open_dataset(
        {
            "format": "hdf5",
            "path": str(ROOT / "datasets" / "chno-mini.h5"),
            "energy_key": "gfn2.energy",
            "forces_key": "gfn2.forces",
            "units": {"energy": "hartree", "length": "angstrom"},
        }
    )
    indices = np.arange(0, len(data), len(data) // 8)[:8]  # 8 frames of different molecules
    atomref, scale = fit_atomref(data, indices, SPECIES)
    torch.manual_seed(0)
    pot = Potential.build(SMALL[name], SPECIES, atomref=atomref, energy_scale=scale)
    batch = collate([data[int(i)] for i in indices])
    batch = {k: (v.float() if v.is_floating_point() else v) for k, v in batch.items()}

    def loss_fn(create_graph: bool) -> torch.Tensor:
        out = pot(batch, create_graph=create_graph)
        de = (out[keys.ENERGY] - batch[keys.ENERGY]) / batch[keys.N_ATOMS]
        return (de**2).mean() + 10.0 * ((out[keys.FORCES] - batch[keys.FORCES]) ** 2).mean()

    initial = float(loss_fn(False).detach())
    opt = torch.optim.Adam(pot.parameters(), lr=1e-2)
    for _ in range(30):
        opt.zero_grad()
        loss = loss_fn(True)
        loss.backward()
        opt.step()
    final = float(loss_fn(False).detach())
    assert np.isfinite(final) and final < 0.8 * initial


# -------------------------------------------------------------- save/load
@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip_identical(name, tmp_path):
    pot = make_potential(name, seed=5)
    pot.save(tmp_path / "model.pt")
    loaded = Potential.load(tmp_path / "model.pt")
    assert loaded.model_config == pot.model_config
    batch = batch_of([ethanol(), periodic_water()])
    a, b = pot(dict(batch)), loaded(dict(batch))
    for key in (keys.ENERGY, keys.FORCES):
        assert torch.equal(a[key], b[key])


# ---------------------------------------------------------------- HIP-NN
def test_hipnn_layer_energies_sum_to_total():
    pot = make_potential("hipnn")
    batch = batch_of([ethanol(), acetamide()])
    out = pot(batch)
    layers = out[keys.LAYER_ENERGY]
    assert layers.shape == (2, SMALL["hipnn"]["n_interactions"] + 1)
    torch.testing.assert_close(layers.sum(1), out[keys.ENERGY], rtol=1e-6, atol=1e-5)
    # the model's own per-atom layer shares sum to its atomic energy
    pairs_batch = {keys.SPECIES: pot.species_of(batch[keys.Z])}
    from nnp.neighbors import neighbor_list

    nbrs = neighbor_list(batch[keys.R], batch[keys.IDX_M], batch[keys.N_ATOMS], batch[keys.CELL], batch[keys.PBC], pot.cutoff)
    vectors = batch[keys.R][nbrs.pairs[1]] - batch[keys.R][nbrs.pairs[0]]
    pairs_batch.update(
        {keys.PAIRS: nbrs.pairs, keys.PAIR_VECTORS: vectors, keys.PAIR_DISTANCES: vectors.norm(dim=-1),
         keys.IDX_M: batch[keys.IDX_M], keys.N_ATOMS: batch[keys.N_ATOMS]}
    )
    model_out = pot.model(pairs_batch)
    torch.testing.assert_close(model_out[keys.LAYER_ENERGY].sum(1), model_out[keys.ATOMIC_ENERGY])


def test_inverse_gaussian_sensitivities():
    from nnp.nn import InverseGaussianRBF, build_radial_basis

    basis = InverseGaussianRBF(5, 6.5, start=1.0, stop=5.0, trainable=False)
    centres = 1.0 / basis.inv_centers  # Å, from 5 down to 1
    torch.testing.assert_close(centres[[0, -1]], torch.tensor([5.0, 1.0]))
    values = basis(centres)
    torch.testing.assert_close(values.diagonal(), torch.ones(5))  # each peaks at its centre
    assert (values.sum(0) < 2.5).all()  # and overlaps its neighbors only partly
    assert len(list(InverseGaussianRBF(4, 5.0).parameters())) == 2  # learnable by default (HIP-NN)
    assert isinstance(build_radial_basis("inverse_gaussian", 4, 5.0), InverseGaussianRBF)


def test_models_without_layers_report_none():
    out = make_potential("schnet")(batch_of([ethanol()]))
    assert keys.LAYER_ENERGY not in out


# --------------------------------------------------------- shipped configs
CONFIGS = sorted((ROOT / "conf" / "model").glob("*.yaml"))


def test_every_architecture_has_a_config():
    assert {p.stem for p in CONFIGS} >= set(MODELS)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_builds(path):
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
    pot = Potential.build(cfg, SPECIES)
    out = pot(batch_of([ethanol()]))
    assert torch.isfinite(out[keys.ENERGY]).all() and torch.isfinite(out[keys.FORCES]).all()
    assert pot.cutoff > 0 and pot.model.n_species == len(SPECIES)


def test_paper_defaults():
    schnet = OmegaConf.load(ROOT / "conf/model/schnet.yaml")
    assert (schnet.n_features, schnet.n_interactions, schnet.cutoff, schnet.n_rbf, schnet.activation) == (128, 3, 5.0, 50, "ssp")
    painn = OmegaConf.load(ROOT / "conf/model/painn.yaml")
    assert (painn.n_features, painn.n_interactions, painn.cutoff, painn.n_rbf, painn.activation) == (128, 3, 5.0, 20, "silu")
    hipnn = OmegaConf.load(ROOT / "conf/model/hipnn.yaml")
    assert (hipnn.n_interactions, hipnn.n_atom_layers) == (2, 3)


def test_bad_hyperparameters_are_user_errors():
    with pytest.raises(NNPError, match="schnet"):
        build_model({"name": "schnet", "n_feature": 3}, SPECIES)
    with pytest.raises(NNPError, match="hipnn"):
        build_model({"name": "hipnn", "soft_min": 6.0, "soft_max": 5.0}, SPECIES)
    with pytest.raises(NNPError, match="activation"):
        build_model({"name": "painn", "activation": "relu"}, SPECIES)
