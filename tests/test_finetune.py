"""Transfer learning: ``nnp train finetune.from=... finetune.freeze=[...]``.

Frozen groups come out bit for bit, the rest moves; reference energies are refitted
to the new labels (or kept); committees fine-tune member by member; the lineage is
recorded; bad requests are one line before any work.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from conftest import error_line, nnp_cli

from nnp.committee import Committee, load_model
from nnp.potential import FORMAT_VERSION, Potential

FAST = [
    "data=demo", "trainer=cpu", "trainer.max_epochs=1", "data.batch_size=16", "evaluate_test=false",
    "data.split.train=0.6", "data.split.val=0.2", "data.split.test=0.2",
]


def _base(path, config, species=(1, 6, 7, 8), atomref=(-13.6, -1029.0, -1485.0, -2042.0), seed=0):
    torch.manual_seed(seed)
    pot = Potential.build(config, list(species), list(atomref), energy_scale=0.5)
    pot.save(path, {"note": "base"})
    return pot


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


def test_parameter_groups_cover_every_architecture():
    """Each architecture names groups that exist and together cover all its parameters."""
    from nnp.models import build_model

    expected = {"ani": {"hidden", "output", "layer1"}, "schnet": {"embedding", "interactions", "readout"},
                "painn": {"embedding", "interactions", "readout"}, "hipnn": {"interactions", "readout"}}
    for name, groups in expected.items():
        cfg = {"name": name, "hidden": [8, 8]} if name == "ani" else {"name": name, "n_features": 8}
        model = build_model(cfg, [1, 6, 8])
        table = model.parameter_groups()
        assert groups <= set(table), (name, sorted(table))
        assert all(table[g] for g in table), name
        assert set().union(*table.values()) == {n for n, _ in model.named_parameters()}, name


def test_finetune_freezes_refits_and_records_lineage(tmp_path, tiny_h5, monkeypatch, capsys):
    base_path = tmp_path / "base.pt"
    base = _base(base_path, {"name": "ani", "hidden": [16, 16]})
    run = tmp_path / "ft"
    code, text = nnp_cli(monkeypatch, capsys, "train", *FAST, f"data.path={tiny_h5}", f"finetune.from={base_path}",
                         "finetune.freeze=[hidden]", f"hydra.run.dir={run}")
    assert code in (0, None), text[-3000:]
    tuned = Potential.load(run / "model.pt")
    before, after = _state(base.model), _state(tuned.model)
    hidden = set(base.model.parameter_groups()["hidden"])
    for name in before:
        if name in hidden:
            assert torch.equal(before[name], after[name]), name  # bit for bit
        else:
            assert not torch.equal(before[name], after[name]), name
    # reference energies: the base's plus least-squares offsets of (labels - base prediction)
    from nnp.data import open_dataset
    from nnp.data.splits import load_split
    from nnp.inference import dataset_fetch, run_batches

    data = open_dataset({"format": "hdf5", "path": str(tiny_h5), "energy_key": "gfn2.energy",
                         "forces_key": "gfn2.forces", "units": {"energy": "hartree", "length": "angstrom"}})
    train = load_split(run / "split.npz", len(data))["train"]
    pred = torch.cat([out["energy"] for _, out in run_batches(base, dataset_fetch(data, train), len(train), 64, forces=False)])
    counts = data.composition_matrix(train, base.species)
    offsets, *_ = np.linalg.lstsq(counts, data.energies()[train] - pred.double().numpy(), rcond=None)
    expected = base.atomref.double().numpy() + offsets
    assert np.allclose(tuned.atomref.double().numpy(), expected, atol=2e-3), (tuned.atomref, expected)
    assert not np.allclose(tuned.atomref.double().numpy(), base.atomref.double().numpy(), atol=1.0)
    lineage = tuned.metadata["finetune"]
    assert lineage["base_sha256"] == hashlib.sha256(base_path.read_bytes()).hexdigest()
    assert lineage["frozen"] == ["hidden"] and lineage["refit_atomref"] is True
    assert lineage["base"] == str(base_path.resolve()) and lineage["base_kind"] == "potential"
    assert torch.load(run / "model.pt", weights_only=True)["version"] == FORMAT_VERSION  # lineage needs no new format


def test_committee_finetunes_each_member(tmp_path, tiny_h5, monkeypatch, capsys):
    """A committee base gives a committee; refit_atomref=false keeps each member's reference energies."""
    cfg = {"name": "schnet", "n_features": 8, "n_interactions": 1, "n_rbf": 8}
    members = [_base(tmp_path / f"m{k}.pt", cfg, atomref=(-13.0 - k, -1030.0, -1480.0, -2040.0 + k), seed=k) for k in range(2)]
    Committee(members, sources=["m0", "m1"], metadata={"finetune": {"base": "older.pt"}}).save(tmp_path / "base.pt")
    run = tmp_path / "ft"
    code, text = nnp_cli(monkeypatch, capsys, "train", *FAST, f"data.path={tiny_h5}", f"finetune.from={tmp_path / 'base.pt'}",
                         "finetune.freeze=[embedding,interactions]", "finetune.refit_atomref=false", f"hydra.run.dir={run}")
    assert code in (0, None), text[-3000:]
    tuned = load_model(run / "model.pt")
    assert isinstance(tuned, Committee) and tuned.n_members == 2
    for k, (old, new) in enumerate(zip(members, tuned.members)):
        assert torch.equal(old.atomref, new.atomref)
        before, after = _state(old.model), _state(new.model)
        for name in before:
            assert torch.equal(before[name], after[name]) == (not name.startswith("readout.")), name
        assert new.metadata["finetune"]["base_member"] == k
    assert tuned.metadata["finetune"]["base_kind"] == "committee"
    assert tuned.metadata["finetune"]["base_lineage"] == {"base": "older.pt"}


@pytest.mark.parametrize("extra, needles", [
    (["finetune.freeze=[hidden,decoder]"], ["finetune.freeze=decoder", "groups: hidden, output, layer1, layer2"]),
    (["model.hidden=[32]"], ["model.hidden=[32]", "fixes the architecture"]),
    (["ensemble.size=3"], ["ensemble.size=3", "single model"]),
])
def test_bad_finetune_requests_are_one_line(extra, needles, tmp_path, tiny_h5, monkeypatch, capsys):
    base_path = tmp_path / "base.pt"
    _base(base_path, {"name": "ani", "hidden": [8, 8]})
    code, text = nnp_cli(monkeypatch, capsys, "train", *FAST, f"data.path={tiny_h5}", f"finetune.from={base_path}",
                         *extra, f"hydra.run.dir={tmp_path / 'run'}")
    line = error_line(text)
    assert code == 2, text[-2000:]
    for needle in needles:
        assert needle in line, line
    assert not (tmp_path / "run" / "model.pt").exists()


def test_unknown_element_and_missing_base_are_refused(tmp_path, tiny_h5, monkeypatch, capsys):
    base_path = tmp_path / "base.pt"
    _base(base_path, {"name": "ani", "hidden": [8, 8]}, species=(1, 6, 8), atomref=(-13.6, -1029.0, -2042.0))
    code, text = nnp_cli(monkeypatch, capsys, "train", *FAST, f"data.path={tiny_h5}", f"finetune.from={base_path}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    line = error_line(text)
    assert code == 2 and "element N not in the base model" in line and "H, C, O" in line, line
    code, text = nnp_cli(monkeypatch, capsys, "train", *FAST, f"data.path={tiny_h5}",
                         f"finetune.from={tmp_path / 'nope.pt'}", f"hydra.run.dir={tmp_path / 'run2'}")
    assert code == 2 and "nope.pt: model file not found" in error_line(text)
