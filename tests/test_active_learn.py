"""nnp active-learn: the append-only writer, labelers, selection, and rounds end to end with EMT.

The end-to-end runs use a 13-atom copper cluster (EMT labels, non-periodic: the
ANI-1x layout stores no cell) and a counting EMT (tests/al_labelers.py) to
check that a run interrupted mid-labeling and between stages resumes without
labeling anything twice.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from al_labelers import count
from conftest import error_line, nnp_cli

from nnp.data import open_dataset
from nnp.data.writer import Row, append_rows, batches_in, count_rows
from nnp.errors import NNPError


def _read(path: Path) -> dict[str, dict[str, bytes]]:
    """Each dataset's rows as bytes (strings: their UTF-8 bytes), to compare earlier rows exactly."""
    with h5py.File(path, "r") as f:
        return {g: {k: [bytes(x) if isinstance(x, bytes) else np.asarray(x).tobytes() for x in np.atleast_1d(f[g][k][()])]
                    for k in f[g]} for g in f}


def _open(path: Path):
    return open_dataset({"format": "hdf5", "path": str(path), "energy_key": "energy", "forces_key": "forces",
                         "group_key": None})


def _water(rng, order=(8, 1, 1)) -> Row:
    z = np.array(order)
    xyz = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]]) + rng.normal(0, 0.02, (3, 3))
    return Row(z, xyz, float(rng.normal()), rng.normal(size=(3, 3)))


# ------------------------------------------------------------------- writer


def test_writer_round_trip_append_only(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.h5"
    first = [_water(rng), _water(rng), Row(np.array([6, 1, 1, 1, 1]), rng.normal(size=(5, 3)) * 1.5, -3.0, rng.normal(size=(5, 3)))]
    assert append_rows(path, first, batch="init") == 3
    before = _read(path)
    assert sorted(before) == ["C1H4", "H2O1"]
    # same formula, other atom order: stored in the group's order, forces permuted with the atoms
    swapped = Row(np.array([1, 8, 1]), first[0].positions[[1, 0, 2]] + 0.01, 1.5, first[0].forces[[1, 0, 2]])
    assert append_rows(path, [swapped], batch="round_000") == 1
    after = _read(path)
    for g, data in before.items():  # earlier rows untouched, to the byte
        for key, rows in data.items():
            assert after[g][key][: len(rows)] == rows, (g, key)
    with h5py.File(path, "r") as f:
        np.testing.assert_allclose(f["H2O1"]["coordinates"][2], first[0].positions + 0.01)
        np.testing.assert_allclose(f["H2O1"]["forces"][2], first[0].forces)
    assert append_rows(path, [swapped], batch="round_000") == 0  # a batch is appended once
    assert batches_in(path) == ["init", "round_000"] and count_rows(path) == 4
    ds = _open(path)  # nnp's own reader: eV / Å from the file's attributes
    assert len(ds) == 4 and ds.has_forces
    assert sorted(ds.energies().tolist()) == sorted([r.energy for r in first] + [1.5])
    sample = ds[int(np.flatnonzero(np.isclose(ds.energies(), 1.5))[0])]
    np.testing.assert_allclose(sample["forces"], first[0].forces)


def test_writer_failure_leaves_file_unchanged(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    path = tmp_path / "d.h5"
    append_rows(path, [_water(rng)], batch="init")
    raw = path.read_bytes()
    import nnp.data.writer as writer

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writer, "_append_group", broken)
    with pytest.raises(NNPError, match="no space left"):
        append_rows(path, [_water(rng)], batch="round_000")
    assert path.read_bytes() == raw and not list(tmp_path.glob(".*tmp*"))


# ------------------------------------------------------------------- selection and labelers


def test_select_spacing_cap_threshold():
    from nnp.active_learn import select

    cands = [{"traj": t, "frame": f, "std": s} for t, f, s in
             [(0, 1, 0.9), (0, 2, 0.8), (0, 5, 0.7), (1, 1, 0.6), (1, 2, 0.5), (0, 9, 0.1)]]
    picked = select(cands, None, 10, 3)
    assert [(c["traj"], c["frame"]) for c in picked] == [(0, 1), (0, 5), (1, 1), (0, 9)]
    assert len(select(cands, None, 2, 3)) == 2
    assert [c["std"] for c in select(cands, 0.55, 10, 1)] == [0.9, 0.8, 0.7, 0.6]
    rand = select(cands, None, 3, 1, np.random.default_rng(0))
    assert len(rand) == 3 and sorted(c["std"] for c in rand) != [0.7, 0.8, 0.9]


def _cluster(n=3, seed=0):
    from ase.cluster import Icosahedron

    rng = np.random.default_rng(seed)
    base = Icosahedron("Cu", 2)
    out = []
    for _ in range(n):
        a = base.copy()
        a.positions += rng.normal(0, 0.05, a.positions.shape)
        out.append(a)
    return out


@pytest.mark.parametrize("workers", [0, 1])
def test_failed_label_recorded_and_skipped(tmp_path, workers):
    from nnp.labeling import label_structures, read_journal

    counter = tmp_path / "count.txt"
    cfg = {"name": "ase", "calculator": "al_labelers:CountingEMT", "workers": workers,
           "kwargs": {"count_file": str(counter), "fail_at": 2}}
    frames = _cluster(3)
    labels = label_structures(frames, cfg, tmp_path / "labels.jsonl", progress=False)
    assert [lb.ok for lb in labels] == [True, False, True]
    assert "SCF did not converge" in labels[1].reason and count(counter) == 2
    assert np.isfinite(labels[0].forces).all() and labels[0].forces.shape == (13, 3)
    again = label_structures(frames, cfg, tmp_path / "labels.jsonl", progress=False)  # all in the journal
    assert count(counter) == 2 and [lb.ok for lb in again] == [True, False, True]
    assert len(read_journal(tmp_path / "labels.jsonl")) == 3


def test_killed_while_labeling_resumes_without_relabeling(tmp_path):
    from nnp.labeling import label_structures

    counter, journal = tmp_path / "count.txt", tmp_path / "labels.jsonl"
    cfg = {"name": "ase", "calculator": "al_labelers:CountingEMT", "workers": 0,
           "kwargs": {"count_file": str(counter), "interrupt_at": 3}}
    frames = _cluster(4)
    with pytest.raises(KeyboardInterrupt):
        label_structures(frames, cfg, journal, progress=False)
    assert count(counter) == 2
    with open(journal, "a") as fh:  # a record cut short by the kill
        fh.write('{"index": 2, "ok": tr')
    cfg["kwargs"] = {"count_file": str(counter)}
    labels = label_structures(frames, cfg, journal, progress=False)
    assert count(counter) == 4 and all(lb.ok for lb in labels)  # 2 before the kill + the other 2


def test_not_an_ase_calculator_is_refused(monkeypatch, capsys, tmp_path):
    code, text = nnp_cli(monkeypatch, capsys, "active-learn", "seeds=x.extxyz", "data.path=x.extxyz", "labeler=ase",
                         "labeler.calculator=collections:OrderedDict", f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2
    assert "OrderedDict is not an ASE calculator class" in error_line(text)
    monkeypatch.setitem(sys.modules, "submitit", None)  # as if not installed
    code, text = nnp_cli(monkeypatch, capsys, "active-learn", "seeds=x.extxyz", "data.path=x.extxyz", "labeler=ase",
                         "labeler.calculator=ase.calculators.emt:EMT", "labeler.executor=slurm",
                         f"hydra.run.dir={tmp_path / 'run'}")
    assert code == 2 and "needs submitit: pip install 'nnp[slurm]'" in error_line(text)
    assert not (tmp_path / "run" / "dataset.h5").exists()


def _slurm_cfg(counter, cluster, **kwargs):
    return {"name": "ase", "calculator": "al_labelers:CountingEMT", "workers": 1, "executor": "slurm",
            "kwargs": {"count_file": str(counter), **kwargs},
            "slurm": {"cluster": cluster, "structures_per_task": 2, "poll_s": 0.1}}


def test_slurm_array_collects_and_resumes_from_task_files(tmp_path):
    """labeler.executor=slurm with submitit's DebugExecutor standing in for Slurm: labels of a stopped
    run's tasks (task files, never collected) are taken as done; the rest go to array tasks."""
    pytest.importorskip("submitit")
    from nnp.labeling import label_structures, read_journal
    from nnp.labeling.slurm import label_chunk, task_dir

    counter, journal = tmp_path / "count.txt", tmp_path / "round" / "labels.jsonl"
    frames = _cluster(5)
    cfg = _slurm_cfg(counter, "debug", fail_at=3)
    # an array task of an earlier run labeled structures 0 and 1; the command stopped before collecting
    chunk = [(k, frames[k].numbers, frames[k].positions, frames[k].cell.array, frames[k].pbc) for k in (0, 1)]
    assert label_chunk({**cfg, "kwargs": {"count_file": str(counter)}}, chunk, str(task_dir(journal) / "task-000000.jsonl")) == 2
    assert count(counter) == 2
    labels = label_structures(frames, cfg, journal, progress=False)
    assert count(counter) == 4  # 3 more calls, the 3rd call of this labeler failed: 2 counted
    failed = [lb for lb in labels if not lb.ok]  # the tasks of the debug executor run in no fixed order
    assert labels[0].ok and labels[1].ok and len(failed) == 1 and "SCF did not converge" in failed[0].reason
    assert len(read_journal(journal)) == 5
    jobs = json.loads((journal.parent / "labels.jobs.json").read_text())["jobs"]
    assert sorted(k for j in jobs for k in j["indices"]) == [2, 3, 4]
    again = label_structures(frames, cfg, journal, progress=False)
    assert count(counter) == 4 and [lb.ok for lb in again] == [lb.ok for lb in labels]
    np.testing.assert_array_equal(again[0].forces, labels[0].forces)


def test_slurm_array_task_that_dies_is_recorded(tmp_path):
    """A task process that dies (LocalExecutor standing in for Slurm): its finished labels are kept,
    the rest of its chunk is recorded as failed with the job's reason, and a rerun relabels nothing."""
    pytest.importorskip("submitit")
    from nnp.labeling import label_structures

    counter, journal = tmp_path / "count.txt", tmp_path / "labels.jsonl"
    frames = _cluster(4)
    cfg = _slurm_cfg(counter, "local", die_at=2)  # each task (its own process) dies on its 2nd structure
    env = os.environ.get("PYTHONPATH", "")
    tests = str(Path(__file__).parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(x for x in (tests, env) if x)  # al_labelers in the task processes
    try:
        labels = label_structures(frames, cfg, journal, progress=False)
    finally:
        os.environ["PYTHONPATH"] = env
    assert [lb.ok for lb in labels] == [True, False, True, False] and count(counter) == 2
    assert labels[1].reason.startswith("slurm job ") and "ended without a result" in labels[1].reason
    again = label_structures(frames, cfg, journal, progress=False)
    assert count(counter) == 2 and [lb.ok for lb in again] == [True, False, True, False]


def test_committee_and_threshold_required():
    from omegaconf import OmegaConf

    from nnp.active_learn import _check

    cfg = OmegaConf.create({"ensemble": {"size": 1}, "selection": {"mode": "top_k"}, "md": {"uncertainty": {"threshold": None}}})
    with pytest.raises(NNPError, match="at least 2 members"):
        _check(cfg)
    cfg.ensemble.size, cfg.selection.mode = 2, "threshold"
    with pytest.raises(NNPError, match="needs md.uncertainty.threshold"):
        _check(cfg)


# ------------------------------------------------------------------- end to end


@pytest.fixture
def cu_files(tmp_path):
    import ase.io
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = _cluster(14, seed=3)
    for a in frames:
        a.calc = EMT()
        a.calc = SinglePointCalculator(a, energy=a.get_potential_energy(), forces=a.get_forces())
    ase.io.write(tmp_path / "init.extxyz", frames[:10])
    ase.io.write(tmp_path / "test.extxyz", frames[10:])
    ase.io.write(tmp_path / "seed.extxyz", _cluster(1, seed=9)[0])
    return tmp_path


def test_rounds_end_to_end_resume_without_relabeling(cu_files, monkeypatch, capsys):
    import nnp.active_learn as al

    work, counter = cu_files / "run", cu_files / "count.txt"
    args = [
        "active-learn", "data=ase", f"data.path={cu_files / 'init.extxyz'}", "data.split.train=0.7",
        "data.split.val=0.3", "data.split.test=0.0", f"seeds={cu_files / 'seed.extxyz'}",
        f"test_data={cu_files / 'test.extxyz'}", "labeler=ase", "labeler.calculator=al_labelers:CountingEMT",
        "labeler.workers=0", "model=ani", "model.hidden=[8]", "model.hidden_per_element=null", "ensemble.size=2",
        "rounds=1", "trainer=cpu", "trainer.max_epochs=1", "md.steps=24", "md.write_interval=4",
        "md.uncertainty.min_interval=8", "sampling.trajectories=1", "selection.max_per_round=3",
        f"hydra.run.dir={work}",
    ]
    kw = f"+labeler.kwargs.count_file={counter}"
    # 1: killed between labeling and appending (a kill inside labeling: test_killed_while_labeling)
    real_append = al._append

    def killed(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(al, "_append", killed)
    code, _ = nnp_cli(monkeypatch, capsys, *args, kw)
    assert code == 130 and count(counter) == 3
    state = json.loads((work / "state.json").read_text())
    assert state["rounds"]["0"]["done"] == ["train", "sample", "select", "label"]
    before = _read(work / "dataset.h5")
    assert sum(len(g["energy"]) for g in before.values()) == 10
    # 2: the same command appends, trains the last committee, reports; nothing labeled again
    monkeypatch.setattr(al, "_append", real_append)
    code, text = nnp_cli(monkeypatch, capsys, *args, kw)
    assert code == 0, text[-3000:]
    assert count(counter) == 3
    after = _read(work / "dataset.h5")
    for g, data in before.items():  # the initial rows, byte for byte
        for key, rows in data.items():
            assert after[g][key][: len(rows)] == rows
    assert sum(len(g["energy"]) for g in after.values()) == 13
    assert batches_in(work / "dataset.h5") == ["init", "round_000"]
    rounds = json.loads((work / "rounds.json").read_text())["rounds"]
    assert [r["labels"] for r in rounds] == [10, 13]
    assert rounds[0]["selected"] == 3 and rounds[0]["labeled"] == 3 and rounds[0]["failed"] == 0
    assert rounds[0]["candidates"] == 6 and rounds[0]["disagreement_max_eV_A"] > 0
    assert all(r["test_forces_mae_eV_A"] > 0 for r in rounds)
    csv_lines = (work / "rounds.csv").read_text().splitlines()
    assert csv_lines[0].startswith("round,labels,") and len(csv_lines) == 3
    assert (work / "rounds.png").stat().st_size > 0
    assert (work / "round_001" / "committee" / "model.pt").is_file()
    # steps of the picks from one trajectory at least md.uncertainty.min_interval apart
    import ase.io

    steps = sorted(a.info["step"] for a in ase.io.read(work / "round_000" / "selected.extxyz", index=":"))
    assert all(b - a >= 8 for a, b in zip(steps, steps[1:])) and steps[0] > 0


def test_xtb_without_tblite_says_how_to_install(monkeypatch):
    import sys

    from nnp.registry import LABELERS

    monkeypatch.setitem(sys.modules, "tblite.ase", None)  # as if tblite were not installed
    with pytest.raises(NNPError, match=r"pip install 'nnp\[xtb\]'"):
        LABELERS.get("xtb")({"method": "GFN2-xTB"})


@pytest.mark.shared
def test_xtb_label_matches_reference_data():
    pytest.importorskip("tblite")
    import ase.io
    from conftest import shared_file

    from nnp.labeling import label_one

    atoms = ase.io.read(shared_file("aspirin-gfn2-500K.extxyz"), index=0)
    lb = label_one({"name": "xtb", "method": "GFN2-xTB"}, 0, atoms.numbers, atoms.positions, atoms.cell.array, atoms.pbc)
    assert lb.ok and abs(lb.energy - atoms.get_potential_energy()) < 1e-5
    np.testing.assert_allclose(lb.forces, atoms.get_forces(), atol=1e-3)
    assert set(lb.extra) == {"charges", "dipole"}


def test_dead_worker_stops_resumably(tmp_path):
    from nnp.errors import EXIT_RESUMABLE
    from nnp.labeling.run import LabelingStopped, label_structures

    cfg = {"name": "ase", "calculator": "al_labelers:DyingEMT", "workers": 1}
    with pytest.raises(LabelingStopped, match="rerun the same command") as stop:
        label_structures(_cluster(2), cfg, tmp_path / "labels.jsonl", progress=False)
    assert stop.value.exit_code == EXIT_RESUMABLE
