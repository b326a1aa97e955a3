"""Neighbor pairs cached with the training data (nnp.data.pair_cache) give the same training as searching them every step."""

from __future__ import annotations

import copy
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from conftest import error_line, nnp_cli

from nnp import keys
from nnp.data.collate import atoms_to_sample, collate
from nnp.data.pair_cache import PairCachedDataset
from nnp.neighbors import neighbor_list
from nnp.potential import Potential
from nnp.training.loss import EnergyForceLoss

ROOT = Path(__file__).resolve().parents[1]


def labelled_samples(path: Path, count: int) -> list[dict]:
    """The file's labels where it has them, else random ones (the test compares two trainings, not accuracy)."""
    rng = np.random.default_rng(0)
    samples = []
    for k, atoms in enumerate(ase.io.read(path, index=f":{count}")):
        s = atoms_to_sample(atoms, k)
        labelled = atoms.calc is not None
        s[keys.ENERGY] = atoms.get_potential_energy() if labelled else rng.normal()
        s[keys.FORCES] = atoms.get_forces() if labelled else rng.normal(size=(len(atoms), 3))
        if atoms.pbc.any():
            s[keys.STRESS] = atoms.get_stress(voigt=False)
        samples.append(s)
    return samples


def sorted_pairs(pairs: torch.Tensor, images: torch.Tensor) -> np.ndarray:
    rows = torch.cat([pairs.T, images], 1).numpy()
    return rows[np.lexsort(rows.T[::-1])]


@pytest.mark.parametrize("data, model, stress", [
    ("datasets/molecules.extxyz", "schnet", False),
    ("tests/data/cu-emt-tiny.extxyz", "painn", True),
])
def test_cached_pairs_train_identically(data, model, stress):
    samples = labelled_samples(ROOT / data, 6)
    species = sorted({int(z) for s in samples for z in s[keys.Z]})
    torch.manual_seed(0)
    cfg = {"name": model, "n_features": 8, "n_interactions": 2, "cutoff": 4.0}
    plain = Potential.build(cfg, species).double()
    cached = copy.deepcopy(plain)
    dataset = PairCachedDataset(samples, plain.cutoff)
    loss_fn = EnergyForceLoss(stress_weight=1.0 if stress else 0.0)
    opts = [torch.optim.SGD(p.parameters(), lr=1e-3) for p in (plain, cached)]
    for _epoch in range(3):  # epochs over two batches: the second and third epochs read the cache
        for idx in ([0, 1, 2], [3, 4, 5]):
            without = collate([samples[i] for i in idx])
            with_pairs = collate([dataset[i] for i in idx])
            assert keys.PAIRS in with_pairs and keys.PAIRS not in without
            n = with_pairs[keys.N_ATOMS]
            ref = neighbor_list(without[keys.R], without[keys.IDX_M], n, without[keys.CELL], without[keys.PBC], plain.cutoff)
            np.testing.assert_array_equal(sorted_pairs(*ref), sorted_pairs(with_pairs[keys.PAIRS], with_pairs[keys.PAIR_IMAGES]))
            losses, grads = [], []
            for pot, opt, batch in ((plain, opts[0], without), (cached, opts[1], with_pairs)):
                pred = pot(batch, compute_forces=True, compute_stress=stress, create_graph=True)
                loss, _ = loss_fn(pred, batch)
                opt.zero_grad()
                loss.backward()
                losses.append(loss.detach())
                grads.append(torch.cat([p.grad.flatten() for p in pot.parameters() if p.grad is not None]))
                opt.step()
            torch.testing.assert_close(losses[1], losses[0], rtol=1e-12, atol=1e-14)
            torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
    assert dataset.misses == 6 and dataset.hits == 12
    assert 0 < dataset.nbytes


def test_cache_follows_cutoff_and_budget():
    samples = labelled_samples(ROOT / "tests/data/cu-emt-tiny.extxyz", 2)
    dataset = PairCachedDataset(samples, 3.0)
    short = dataset[0][keys.PAIRS].shape[1]
    dataset.set_cutoff(5.0)  # a different cutoff: the cache is emptied and pairs found again
    assert dataset.nbytes == 0
    wide = dataset[0]
    assert wide[keys.PAIRS].shape[1] > short and dataset.misses == 2
    ref = neighbor_list(torch.from_numpy(samples[0][keys.R]), torch.zeros(4, dtype=torch.long), torch.tensor([4]),
                        torch.from_numpy(samples[0][keys.CELL])[None], torch.from_numpy(samples[0][keys.PBC])[None], 5.0)
    assert wide[keys.PAIRS].shape[1] == ref.pairs.shape[1]
    assert wide[keys.PAIRS].dtype == np.int16 and wide[keys.PAIR_IMAGES].dtype == np.int8
    tiny = PairCachedDataset(samples, 5.0, max_bytes=0)  # nothing fits: pairs still come, nothing kept
    assert keys.PAIRS in tiny[1] and keys.PAIRS in tiny[1] and tiny.nbytes == 0 and tiny.hits == 0


def test_datamodule_batches_carry_cached_pairs():
    from nnp.training.datamodule import AtomsDataModule

    samples = labelled_samples(ROOT / "datasets/molecules.extxyz", 4)
    split = {"train": np.arange(4), "val": np.arange(2), "test": np.arange(2)}
    cached = AtomsDataModule(samples, split, batch_size=2, pair_cutoff=4.0)
    for _epoch in range(2):
        for batch in cached.train_dataloader():
            ref = neighbor_list(batch[keys.R], batch[keys.IDX_M], batch[keys.N_ATOMS], batch[keys.CELL], batch[keys.PBC], 4.0)
            np.testing.assert_array_equal(sorted_pairs(*ref), sorted_pairs(batch[keys.PAIRS], batch[keys.PAIR_IMAGES]))
    assert cached.source.misses == 4 and cached.source.hits == 4  # the second epoch read the cache
    plain = AtomsDataModule(samples, split, batch_size=2)  # data.cache_pairs=false: the potential searches
    assert keys.PAIRS not in next(iter(plain.train_dataloader()))


@pytest.mark.parametrize("override, item", [("data.pair_cache_mb=-1", "data.pair_cache_mb"), ("data.cache_pairs=maybe", "data.cache_pairs")])
def test_bad_cache_settings_are_one_line(monkeypatch, capsys, tmp_path, override, item):
    code, text = nnp_cli(monkeypatch, capsys, "train", override, f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and item in error_line(text)
    assert not (tmp_path / "run" / "model.pt").exists()
