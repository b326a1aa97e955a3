"""Committees: mean and spread against the members, files, calculator, commands."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import ase.io
import pytest
import torch

from nnp import keys
from nnp.calculator import NNPCalculator
from nnp.committee import Committee, load_model
from nnp.errors import NNPError
from nnp.export import export_potential, exported_metadata, load_exported
from nnp.potential import FORMAT_VERSION, Potential
from tests.conftest import TINY_TRAIN, assert_clean_error, run_nnp
from tests.test_models import NAMES, acetamide, batch_of, ethanol, make_potential

DATA = Path(__file__).parent / "data"


def members_of(name: str, n: int = 3, dtype=torch.float64) -> list[Potential]:
    return [make_potential(name, dtype, seed=s) for s in range(n)]


def detached(out: dict) -> dict:
    return {k: v.detach() for k, v in out.items()}


# ------------------------------------------------------------ the numbers
@pytest.mark.parametrize("name", NAMES)
def test_mean_and_spread_equal_the_members(name):
    members = members_of(name)
    committee = Committee(members)
    batch = batch_of([ethanol(), acetamide()], torch.float64)
    out = detached(committee(dict(batch)))
    each = [detached(m(dict(batch))) for m in members]
    energies = torch.stack([o[keys.ENERGY] for o in each])
    forces = torch.stack([o[keys.FORCES] for o in each])
    torch.testing.assert_close(out[keys.ENERGY], energies.mean(0), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(out[keys.FORCES], forces.mean(0), rtol=1e-12, atol=1e-10)
    torch.testing.assert_close(out[keys.ENERGY_STD], energies.std(0, unbiased=False), rtol=1e-10, atol=1e-10)
    spread = ((forces - forces.mean(0)) ** 2).sum(-1).mean(0).sqrt()
    torch.testing.assert_close(out[keys.FORCES_STD], spread, rtol=1e-10, atol=1e-10)
    idx_m = batch[keys.IDX_M]
    for m in range(2):
        assert float(out[keys.MAX_FORCES_STD][m]) == pytest.approx(float(spread[idx_m == m].max()), rel=1e-12)
    torch.testing.assert_close(out[keys.MEMBER_FORCES], forces, rtol=1e-12, atol=1e-10)
    assert float(out[keys.ENERGY_STD].min()) > 0  # different seeds really differ


@pytest.mark.parametrize("name", ["ani", "painn"])
def test_one_pass_and_member_by_member_agree(name):
    committee = Committee(members_of(name))
    batch = batch_of([ethanol(), acetamide()], torch.float64)
    batched = detached(committee(dict(batch), compute_stress=False))
    committee.batched_backward = False
    committee.shared_descriptor = False
    looped = detached(committee(dict(batch), compute_stress=False))
    for key in (keys.ENERGY, keys.FORCES, keys.ENERGY_STD, keys.FORCES_STD):
        torch.testing.assert_close(batched[key], looped[key], rtol=1e-12, atol=1e-12)


def test_identical_members_have_zero_spread():
    one = make_potential("schnet", torch.float64)
    committee = Committee([one, Potential.from_dict(one.to_dict())])
    out = detached(committee(batch_of([ethanol()], torch.float64)))
    assert float(out[keys.ENERGY_STD].abs().max()) == 0.0
    assert float(out[keys.FORCES_STD].abs().max()) < 1e-12


def test_calibration_scales_the_spread_only():
    committee = Committee(members_of("ani"))
    batch = batch_of([ethanol()], torch.float64)
    raw = detached(committee(dict(batch)))
    committee.set_calibration(2.0, 3.0, "held-out.h5")
    scaled = detached(committee(dict(batch)))
    torch.testing.assert_close(scaled[keys.ENERGY], raw[keys.ENERGY])
    torch.testing.assert_close(scaled[keys.ENERGY_STD], 2.0 * raw[keys.ENERGY_STD])
    torch.testing.assert_close(scaled[keys.FORCES_STD], 3.0 * raw[keys.FORCES_STD])


def test_periodic_stress_is_the_member_mean():
    from ase.build import bulk

    cell = bulk("C", "diamond", a=3.6, cubic=True)
    cell.rattle(0.02, seed=3)
    members = members_of("schnet")
    committee = Committee(members)
    batch = batch_of([cell], torch.float64)
    out = detached(committee(dict(batch), compute_stress=True))
    stresses = torch.stack([detached(m(dict(batch), compute_stress=True))[keys.STRESS] for m in members])
    torch.testing.assert_close(out[keys.STRESS], stresses.mean(0), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ files
def test_save_load_round_trip_is_exact(tmp_path):
    committee = Committee(members_of("hipnn"), metadata={"note": "x"})
    committee.set_calibration(1.7, 2.5, "cal.h5")
    committee.save(tmp_path / "c.pt")
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    assert payload["version"] == FORMAT_VERSION and payload["kind"] == "committee"
    loaded = load_model(tmp_path / "c.pt")
    assert isinstance(loaded, Committee) and loaded.n_members == 3
    assert loaded.calibration["applied"] and loaded.calibration["forces"] == 2.5
    batch = batch_of([ethanol(), acetamide()], torch.float64)
    a, b = detached(committee(dict(batch))), detached(loaded(dict(batch)))
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_list_of_files_is_a_committee(tmp_path):
    paths = []
    for k, m in enumerate(members_of("ani", 2, torch.float32)):
        m.save(tmp_path / f"m{k}.pt")
        paths.append(str(tmp_path / f"m{k}.pt"))
    model = load_model(paths)
    assert isinstance(model, Committee) and model.n_members == 2
    assert isinstance(load_model([paths[0]]), Potential)
    # a committee file inside a list contributes its members
    model.save(tmp_path / "c.pt")
    assert load_model([str(tmp_path / "c.pt"), paths[0]]).n_members == 3


@pytest.mark.parametrize("version_file", ["model_v1.pt", "committee_v2.pt"])
def test_every_earlier_format_version_still_loads(version_file):
    """tests/data keeps one small file per format version (v1: single model; v2: committee)."""
    model = load_model(DATA / version_file)
    out = model(batch_of([ethanol()], model.atomref.dtype))
    assert torch.isfinite(out[keys.ENERGY]).all() and torch.isfinite(out[keys.FORCES]).all()
    assert Potential.load(DATA / "model_v1.pt").metadata["note"].startswith("format version 1")


def test_incompatible_members_are_refused(tmp_path):
    a = make_potential("ani")
    a.save(tmp_path / "a.pt")
    torch.manual_seed(1)
    Potential.build({"name": "ani", "hidden": [8]}, [1, 6, 8], [0.0, 0.0, 0.0]).save(tmp_path / "species.pt")
    make_potential("ani", radial_cutoff=4.0).save(tmp_path / "cutoff.pt")
    make_potential("ani", torch.float64).save(tmp_path / "dtype.pt")
    torch.save({"hello": 1}, tmp_path / "junk.pt")
    cases = {
        "species.pt": "species H,C,O differ",
        "cutoff.pt": "cutoff 4.0 Å differs",
        "dtype.pt": "dtype float64 differs",
        "junk.pt": "not an nnp model file",
        "missing.pt": "model file not found",
    }
    for name, needle in cases.items():
        with pytest.raises(NNPError, match=needle):
            load_model([str(tmp_path / "a.pt"), str(tmp_path / name)])
    with pytest.raises(NNPError, match="empty"):
        load_model([])


def test_damaged_model_files_give_one_line(tmp_path):
    good = make_potential("ani").to_dict()
    cases = {
        "no_state": ({k: v for k, v in good.items() if k != "state_dict"}, "no 'state_dict' entry"),
        "bad_species": ({**good, "species": ["H"]}, "atomic numbers"),
        "bad_atomref": ({**good, "atomref": torch.zeros(2)}, "'atomref' has shape"),
        "wrong_weights": ({**good, "state_dict": {"x": torch.zeros(1)}}, "does not match"),
        "future": ({**good, "version": FORMAT_VERSION + 1}, "newer than this nnp"),
        "committee_empty": ({**good, "kind": "committee", "members": []}, "no list of member models"),
    }
    for name, (payload, needle) in cases.items():
        torch.save(payload, tmp_path / f"{name}.pt")
        with pytest.raises(NNPError, match=needle):
            load_model(tmp_path / f"{name}.pt")


# --------------------------------------------------------- calculator, export
def test_calculator_reports_the_spread(tmp_path):
    paths = []
    for k, m in enumerate(members_of("schnet", 3, torch.float32)):
        m.save(tmp_path / f"m{k}.pt")
        paths.append(str(tmp_path / f"m{k}.pt"))
    atoms = ethanol()
    atoms.calc = NNPCalculator(paths)
    forces = atoms.get_forces()
    res = atoms.calc.results
    assert forces.shape == (9, 3) and res["forces_std"].shape == (9,)
    assert res["max_forces_std"] == pytest.approx(res["forces_std"].max())
    assert res["energy_std"] > 0
    single = ethanol()
    single.calc = NNPCalculator(paths[0])
    single.get_forces()
    assert "max_forces_std" not in single.calc.results


def test_exported_committee_matches_python(tmp_path):
    committee = Committee(members_of("painn", 3, torch.float32))
    committee.set_calibration(1.5, 2.0, None)
    path = export_potential(committee, tmp_path / "c.ts")
    assert exported_metadata(path)["n_members"] == 3
    exported = load_exported(path)
    batch = batch_of([ethanol(), acetamide()])
    a, b = detached(committee(dict(batch))), exported(dict(batch))
    for key in (keys.ENERGY, keys.FORCES, keys.ENERGY_STD, keys.FORCES_STD, keys.MAX_FORCES_STD):
        torch.testing.assert_close(b[key].detach(), a[key], rtol=1e-5, atol=1e-6)


def test_export_command_takes_a_list_of_files(tmp_path):
    from nnp.cli import main as cli_main

    paths = []
    for k, m in enumerate(members_of("ani", 2, torch.float32)):
        m.save(tmp_path / f"m{k}.pt")
        paths.append(str(tmp_path / f"m{k}.pt"))
    out = tmp_path / "c.ts"
    assert cli_main(["export", f"ckpt=[{','.join(paths)}]", f"output={out}"]) == 0
    assert exported_metadata(out)["n_members"] == 2
    res = load_exported(out)(batch_of([ethanol()]))
    assert res[keys.MAX_FORCES_STD].shape == (1,) and float(res[keys.MAX_FORCES_STD][0]) > 0


# --------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def committee_run(tmp_path_factory, tiny_h5) -> Path:
    run_dir = tmp_path_factory.mktemp("committee") / "run"
    res = run_nnp(
        "train", "data=demo", f"data.path={tiny_h5}", *TINY_TRAIN, "trainer.max_epochs=1",
        "ensemble.size=2", "ensemble.bootstrap=true", f"hydra.run.dir={run_dir}",
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return run_dir


@pytest.mark.slow
def test_train_evaluate_calibrate_predict_combine(committee_run, tmp_path):
    run = committee_run
    for k in range(2):
        assert (run / "members" / str(k) / "model.pt").is_file()
        assert (run / "members" / str(k) / "checkpoints" / "best.ckpt").is_file()
    committee = load_model(run / "model.pt")
    assert isinstance(committee, Committee) and committee.n_members == 2
    seeds = {m.metadata["seed"] for m in committee.members}
    assert len(seeds) == 2
    report = json.loads((run / "test_report.json").read_text())
    assert report["n_members"] == 2 and "spearman" in report["uncertainty"]["forces"]

    # evaluate + calibrate on the members' shared validation split (a copy: calibrate rewrites the file)
    model = tmp_path / "committee.pt"
    shutil.copy(run / "model.pt", model)
    out = tmp_path / "report.json"
    res = run_nnp("evaluate", f"ckpt={model}", "split=test", "calibrate=true", f"output={out}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    metrics = json.loads(out.read_text())
    assert metrics["calibration"]["applied"] is True and metrics["calibration"]["forces"] > 0
    assert (tmp_path / "report_calibration.png").stat().st_size > 0
    assert load_model(model).calibration["applied"]

    # predict with a list of member files
    members = [str(run / "members" / str(k) / "model.pt") for k in range(2)]
    frames = tmp_path / "in.extxyz"
    ase.io.write(frames, [ethanol(), acetamide()])
    pred = tmp_path / "pred.extxyz"
    res = run_nnp("predict", f"ckpt=[{','.join(members)}]", f"input={frames}", f"output={pred}")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    got = ase.io.read(pred, ":")
    assert all(a.info["energy_std"] >= 0 and a.info["max_forces_std"] > 0 for a in got)
    assert got[0].arrays["forces_std"].shape == (9,)
    assert got[0].info["max_forces_std"] == pytest.approx(got[0].arrays["forces_std"].max(), rel=1e-6)

    # combine members trained elsewhere into one file
    combined = tmp_path / "combined.pt"
    res = run_nnp("ensemble", "combine", *members, f"output={combined}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_model(combined).n_members == 2
    assert_clean_error(run_nnp("ensemble", "combine", *members, f"output={combined}"), "already exists")


def test_command_line_refusals(trained_run, tmp_path):
    model = trained_run / "model.pt"
    assert_clean_error(
        run_nnp("evaluate", f"ckpt={model}", "calibrate=true", f"output={tmp_path / 'r.json'}"), "single model"
    )
    assert_clean_error(
        run_nnp("evaluate", f"ckpt=[{model},{model}]", "calibrate=true", f"output={tmp_path / 'r.json'}"),
        "calibrate",
    )
    assert_clean_error(run_nnp("ensemble", "combine", str(model), f"output={tmp_path / 'c.pt'}"), "at least two")
    assert_clean_error(
        run_nnp("ensemble", "combine", str(model), str(tmp_path / "nope.pt"), f"output={tmp_path / 'c.pt'}"), "not found"
    )
    assert not (tmp_path / "c.pt").exists() and not (tmp_path / "r.json").exists()
