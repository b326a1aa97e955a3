"""`nnp md` watches every step: safety limits (exit 3) and a committee's uncertainty (flag, or stop with exit 4)."""

from __future__ import annotations

import csv
import json
import re
from itertools import product
from pathlib import Path

import ase.io
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from conftest import REPO, error_line, nnp_cli
from omegaconf import OmegaConf

from nnp import NNPCalculator, Potential
from nnp.errors import (
    EXIT_SAFETY_STOP,
    EXIT_UNCERTAINTY_STOP,
    NNPError,
    SafetyStop,
    UncertaintyStop,
)
from nnp.md import simulate
from nnp.md_watch import (
    MinDistanceWatch,
    SafetyLimits,
    UncertaintySettings,
    check_max_force,
    check_non_finite,
    check_temperature,
)

ASPIRIN = REPO / "datasets/aspirin.xyz"


def small_model(seed: int = 0, energy_scale: float = 0.1) -> Potential:
    torch.manual_seed(seed)
    cfg = {"name": "ani", "hidden": [16, 16], "hidden_per_element": None}
    return Potential.build(cfg, [1, 6, 7, 8], atomref=[-13.6, -1029.0, -1485.0, -2042.0], energy_scale=energy_scale)


def md_cfg(tmp_path: Path, *overrides: str):
    """conf/md.yaml with ``key=value`` overrides, as the CLI composes it (without Hydra)."""
    base = OmegaConf.load(REPO / "conf/md.yaml")
    for key in ("defaults", "hydra"):
        base.pop(key, None)
    cfg = OmegaConf.merge(base, OmegaConf.from_dotlist([
        "ckpt=unused", f"input={ASPIRIN}", f"output={tmp_path / 'traj.extxyz'}", "md.steps=10",
        "md.write_interval=2", "md.log_interval=1", *overrides,
    ]))
    return cfg


def aspirin(calc=None):
    atoms = ase.io.read(ASPIRIN)
    atoms.calc = calc if calc is not None else NNPCalculator(small_model(), dtype="float64")
    return atoms


class StandInCommittee(Calculator):
    """A model's predictions plus a controlled committee spread, as nnp's committee calculator reports it.

    ``spread(call)`` gives max_forces_std (eV/Å) for the ``call``-th evaluation; ``nan_after``
    turns the forces into NaN from that evaluation on.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(self, base, spread=lambda call: 0.1, nan_after: int | None = None, committee: bool = True):
        super().__init__()
        self.base, self.spread, self.nan_after, self.committee = base, spread, nan_after, committee
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        a = self.atoms.copy()
        a.calc = self.base
        forces = a.get_forces()
        if self.nan_after is not None and self.calls >= self.nan_after:
            forces[3] = np.nan
        self.results = {"energy": a.get_potential_energy(), "free_energy": a.get_potential_energy(), "forces": forces}
        if self.committee:
            s = float(self.spread(self.calls))
            per_atom = np.full(len(a), 0.5 * s)
            per_atom[5] = s
            self.results.update(max_forces_std=s, energy_std=0.01 * s, forces_std=per_atom)
        self.calls += 1


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def assert_outputs_readable(tmp_path: Path) -> tuple[list, list, dict]:
    frames = ase.io.read(tmp_path / "traj.extxyz", ":")
    rows = read_csv(tmp_path / "traj.csv")
    summary = json.loads((tmp_path / "traj.json").read_text())
    return frames, rows, summary


# ----------------------------------------------------------------------------- the checks, one by one


def test_check_functions_report_step_atoms_value_and_limit():
    f = np.zeros((4, 3))
    f[2] = [3.0, 4.0, 0.0]
    trip = check_max_force(7, f, 1.0)
    assert (trip.step, trip.atoms, trip.value, trip.limit) == (7, [2], 5.0, 1.0)
    assert trip.detail == "force 5 eV/Å on atom 2 exceeds md.max_force=1"
    assert check_max_force(7, f, 5.5) is None and check_max_force(7, f, None) is None

    f[1, 0] = np.nan
    trip = check_non_finite(3, energy=1.0, forces=f)
    assert trip.check == "non_finite" and trip.atoms == [1] and "non-finite forces on atom 1" in trip.detail
    assert "non-finite energy" in check_non_finite(3, energy=float("inf"), forces=np.zeros((2, 3))).detail
    pos = np.zeros((3, 3))
    pos[[0, 2]] = np.inf
    assert check_non_finite(1, positions=pos).detail == "non-finite positions on atoms 0, 2"

    atoms = Atoms("H2O", positions=[[0, 0, 0], [1, 0, 0], [0, 1, 0]])
    atoms.set_velocities([[0, 0, 0], [0.5, 0, 0], [0, 0, 0]])
    t = atoms.get_temperature()
    trip = check_temperature(9, atoms, 0.5 * t)
    assert trip.atoms == [1] and trip.value == pytest.approx(t) and "hottest atom 1" in trip.detail
    assert check_temperature(9, atoms, 2 * t) is None and check_temperature(9, atoms, None) is None


def _brute_closest(atoms: Atoms) -> float:
    """Closest distance over all pairs i < j and all periodic images within +-2 cells (wrapped positions)."""
    pos, cell = atoms.get_positions(wrap=True), atoms.cell.array
    shifts = np.array(list(product(*[range(-2, 3) if p else range(1) for p in atoms.pbc])))
    i, j = np.triu_indices(len(atoms), 1)
    r = (pos[j] - pos[i])[None, :, :] + (shifts @ cell)[:, None, :]
    return float(np.sqrt(np.einsum("spk,spk->sp", r, r).min()))


@pytest.mark.parametrize("pbc", [False, True])
def test_min_distance_watch_equals_brute_force_while_atoms_move(pbc):
    rng = np.random.default_rng(1)
    cell = np.array([[4.0, 0.0, 0.0], [1.3, 3.6, 0.0], [0.7, -0.9, 3.1]])  # triclinic, small: several images in range
    atoms = Atoms("H6", positions=rng.uniform(0, 3, (6, 3)) @ np.eye(3), cell=cell, pbc=pbc)
    limit = 1.0
    watch = MinDistanceWatch(limit)
    trips = 0
    for step in range(300):
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        true = _brute_closest(atoms)
        trip = watch.check(step, atoms)
        assert (trip is not None) == (true < limit), (step, true, trip)
        if trip is not None:
            trips += 1
            assert trip.value == pytest.approx(true, abs=1e-9)
            if not pbc:
                assert atoms.get_distance(*trip.atoms) == pytest.approx(true, abs=1e-9)
    assert 0 < trips < 300  # the case exercises both outcomes
    assert watch.rebuilds < 300  # the skin spares most steps a neighbor search


def test_min_distance_watch_is_linear_for_large_cells():
    """32,000 atoms: one cell-list build, then each step measures only listed pairs and displacements."""
    import time

    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((20, 20, 20))
    atoms.positions[17] = atoms.positions[16] + [0.3, 0.0, 0.0]  # one pair too close, across nothing special
    rng = np.random.default_rng(0)
    watch = MinDistanceWatch(0.5)
    trip = watch.check(0, atoms)
    assert trip is not None and sorted(trip.atoms) == [16, 17] and trip.value == pytest.approx(0.3)
    atoms.positions[17] = atoms.positions[16] + [1.8, 0.0, 0.0]
    t0 = time.perf_counter()
    for step in range(1, 21):
        atoms.positions += rng.normal(0, 0.01, atoms.positions.shape)
        assert watch.check(step, atoms) is None
    per_step = (time.perf_counter() - t0) / 20
    assert watch.rebuilds == 2  # the start, and once more after atom 17 jumped 1.5 Å
    assert per_step < 0.5, per_step  # an O(N^2) pass over 32,000 atoms would take far longer (and 8 GB)


@pytest.mark.parametrize("override, needle", [
    ("md.max_force=-1", "md.max_force=-1: give a number >= 0 (eV/Å), or null to turn it off"),
    ("md.max_temperature_K=hot", "md.max_temperature_K='hot'"),
    ("md.min_distance=-0.1", "md.min_distance=-0.1"),
    ("md.max_force=true", "md.max_force=True"),
    ("md.uncertainty.threshold=-0.5", "md.uncertainty.threshold=-0.5: give a number >= 0"),
    ("md.uncertainty.action=panic", "md.uncertainty.action='panic': choose flag or stop"),
    ("md.uncertainty.min_interval=0", "md.uncertainty.min_interval=0"),
])
def test_bad_limits_are_one_clear_error(tmp_path, override, needle):
    cfg = md_cfg(tmp_path, override)
    with pytest.raises(NNPError, match="^" + re.escape(needle)) as err:
        SafetyLimits.from_config(cfg.md)
        UncertaintySettings.from_config(cfg.md, Path(cfg.output))
    assert type(err.value) is NNPError and "\n" not in str(err.value)


# ----------------------------------------------------------------------------- the checks in a run


@pytest.mark.parametrize("override, needle", [
    ("md.max_force=0.001", "on atom"),
    ("md.max_temperature_K=50", "exceeds md.max_temperature_K=50 (hottest atom"),
    ("md.min_distance=1.2", "Å apart, closer than md.min_distance=1.2"),
])
def test_each_check_trips_and_null_turns_it_off(tmp_path, override, needle):
    key = override.split("=")[0]
    with pytest.raises(SafetyStop) as err:
        simulate(aspirin(), md_cfg(tmp_path, override))
    msg = str(err.value)
    assert err.value.exit_code == EXIT_SAFETY_STOP == 3
    assert msg.startswith("md stopped at step 0: ") and needle in msg and "\n" not in msg, msg
    frames, rows, summary = assert_outputs_readable(tmp_path)
    assert len(frames) == 1 and len(rows) == 1  # the start structure is always written first
    assert "(trajectory and log up to step 0 kept in " in msg
    assert summary["stopped"]["step"] == 0 and summary["stopped"]["check"] == key.split(".")[1]
    assert summary["stopped"]["reason"] in msg

    out = tmp_path / "off"
    summary = simulate(aspirin(), md_cfg(out, override, f"{key}=null"))
    assert summary["stopped"] is None and summary["steps_done"] == 10


def test_non_finite_forces_stop_the_run_with_what_was_written_kept(tmp_path):
    calc = StandInCommittee(NNPCalculator(small_model(), dtype="float64"), nan_after=7, committee=False)
    cfg = md_cfg(tmp_path, "md.max_force=null", "md.max_temperature_K=null", "md.min_distance=null")
    with pytest.raises(SafetyStop) as err:
        simulate(aspirin(calc), cfg)
    assert str(err.value) == (
        f"md stopped at step 7: non-finite forces on atom 3 (trajectory and log up to step 6 kept in "
        f"{tmp_path / 'traj.extxyz'}, {tmp_path / 'traj.csv'})"
    )
    frames, rows, summary = assert_outputs_readable(tmp_path)
    assert len(frames) == 4  # steps 0, 2, 4, 6
    assert len(rows) == 7 and all(np.isfinite(float(r["etot_eV"])) for r in rows)
    assert summary["stopped"]["check"] == "non_finite" and summary["steps_done"] == 7


def test_huge_time_step_explodes_and_exits_3(tmp_path, monkeypatch, capsys):
    """`nnp md` with a 5 fs step on a stiff model blows up: one line, exit code 3, readable outputs."""
    model = tmp_path / "stiff.pt"
    small_model(energy_scale=10.0).save(model)
    out = tmp_path / "traj.extxyz"
    code, text = nnp_cli(monkeypatch, capsys, "md", f"ckpt={model}", f"input={ASPIRIN}", "md.steps=300",
                         "md.timestep_fs=5", "md.write_interval=5", "md.log_interval=5", f"output={out}")
    assert code == 3, text[-3000:]
    line = error_line(text)
    frames, rows, summary = assert_outputs_readable(tmp_path)
    step = summary["stopped"]["step"]
    assert line.startswith(f"error: md stopped at step {step}: ") and str(out) in line
    assert 0 < step < 300
    assert len(frames) == len(range(0, step, 5)) and len(rows) == len(range(0, step, 5))


# ----------------------------------------------------------------------------- committee uncertainty


def _flag_schedule(call: int) -> float:
    return 0.8 if call % 5 in (1, 2, 4) else 0.2


def test_committee_logs_spread_and_flags_frames_apart(tmp_path):
    calc = StandInCommittee(NNPCalculator(small_model(), dtype="float64"), spread=_flag_schedule)
    cfg = md_cfg(tmp_path, "md.steps=40", "md.uncertainty.threshold=0.5", "md.uncertainty.min_interval=4",
                 "md.uncertainty.max_frames=5")
    summary = simulate(aspirin(calc), cfg)
    rows = read_csv(tmp_path / "traj.csv")
    assert list(rows[0])[-2:] == ["max_forces_std_eV_A", "energy_std_eV"]
    spread = np.array([float(r["max_forces_std_eV_A"]) for r in rows])
    assert len(spread) == 41 and set(np.round(spread, 6)) == {0.2, 0.8}
    expected = []  # greedy: each step above the threshold, once min_interval has passed since the last flag
    for step, value in enumerate(spread):
        if value > 0.5 and len(expected) < 5 and (not expected or step - expected[-1] >= 4):
            expected.append(step)
    flagged = ase.io.read(tmp_path / "traj_uncertain.extxyz", ":")
    assert [f.info["step"] for f in flagged] == expected and len(expected) == 5
    for f in flagged:
        assert f.info["max_forces_std"] == pytest.approx(0.8)
        assert f.arrays["forces_std"].shape == (21,) and f.arrays["forces_std"][5] == pytest.approx(0.8)
        assert "forces" not in f.arrays and "energy" not in f.info  # predictions are not written as labels
    u = summary["uncertainty"]
    assert u["flagged_frames"] == 5 and u["flagged_output"] == str(tmp_path / "traj_uncertain.extxyz")
    assert u["max_forces_std_max_eV_A"] == pytest.approx(0.8)
    assert u["max_forces_std_mean_eV_A"] == pytest.approx(spread.mean())
    assert summary["stopped"] is None


def test_committee_without_threshold_only_logs(tmp_path):
    calc = StandInCommittee(NNPCalculator(small_model(), dtype="float64"), spread=lambda c: 3.0)
    summary = simulate(aspirin(calc), md_cfg(tmp_path, "md.uncertainty.output=" + str(tmp_path / "u.extxyz")))
    assert summary["uncertainty"]["flagged_frames"] == 0 and summary["uncertainty"]["flagged_output"] is None
    assert not (tmp_path / "u.extxyz").exists()
    assert float(read_csv(tmp_path / "traj.csv")[3]["max_forces_std_eV_A"]) == 3.0


def test_uncertainty_stop_ends_cleanly_with_exit_4(tmp_path):
    calc = StandInCommittee(NNPCalculator(small_model(), dtype="float64"), spread=lambda c: 0.1 * c)
    cfg = md_cfg(tmp_path, "md.steps=50", "md.uncertainty.threshold=0.55", "md.uncertainty.action=stop",
                 f"md.uncertainty.output={tmp_path / 'next.extxyz'}")
    with pytest.raises(UncertaintyStop) as err:
        simulate(aspirin(calc), cfg)
    assert err.value.exit_code == EXIT_UNCERTAINTY_STOP == 4
    frames, rows, summary = assert_outputs_readable(tmp_path)
    step = summary["stopped"]["step"]
    assert str(err.value).startswith(
        f"md stopped at step {step}: committee uncertainty max_forces_std 0.6 eV/Å (atom 5) exceeds "
        f"md.uncertainty.threshold=0.55; frame written to {tmp_path / 'next.extxyz'} (")
    assert summary["stopped"]["check"] == "uncertainty" and summary["stopped"]["value"] == pytest.approx(0.6)
    assert len(rows) == step and [float(r["max_forces_std_eV_A"]) for r in rows][-1] <= 0.55
    assert len(frames) == len(range(0, step, 2))
    (frame,) = ase.io.read(tmp_path / "next.extxyz", ":")
    assert frame.info["step"] == step
    assert summary["uncertainty"]["flagged_frames"] == 1


def test_threshold_with_a_single_model_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(NNPError, match=r"^md.uncertainty.threshold=0.5 needs a committee model") as err:
        simulate(aspirin(), md_cfg(tmp_path, "md.uncertainty.threshold=0.5"))
    assert type(err.value) is NNPError and err.value.exit_code == 2
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("ensemble", ["nve", "nvt"])
def test_single_model_log_has_no_uncertainty_columns(tmp_path, ensemble):
    summary = simulate(aspirin(), md_cfg(tmp_path, f"md.ensemble={ensemble}"))
    assert list(read_csv(tmp_path / "traj.csv")[0]) == ["time_ps", "epot_eV", "ekin_eV", "etot_eV", "temperature_K"]
    assert summary["uncertainty"] is None and summary["stopped"] is None


# ----------------------------------------------------------------------------- a real committee (nnp.committee)


@pytest.fixture(scope="module")
def committee_files(tmp_path_factory) -> list[Path]:
    """Two tiny members from different seeds: a committee with a real, non-zero spread."""
    d = tmp_path_factory.mktemp("committee")
    paths = [d / "a.pt", d / "b.pt"]
    for seed, path in zip((1, 2), paths):
        small_model(seed, energy_scale=1.0).save(path)
    return paths


def _committee_atoms(paths):
    from nnp.committee import load_model

    return aspirin(NNPCalculator(load_model([str(p) for p in paths]), dtype="float64"))


def test_real_committee_logs_and_flags(tmp_path, committee_files):
    cfg = md_cfg(tmp_path, "md.steps=20", "md.uncertainty.threshold=0", "md.uncertainty.min_interval=3",
                 "md.uncertainty.max_frames=4")
    summary = simulate(_committee_atoms(committee_files), cfg)
    spread = [float(r["max_forces_std_eV_A"]) for r in read_csv(tmp_path / "traj.csv")]
    assert len(spread) == 21 and min(spread) > 0
    flagged = ase.io.read(tmp_path / "traj_uncertain.extxyz", ":")
    assert [f.info["step"] for f in flagged] == [0, 3, 6, 9]
    for f in flagged:
        assert f.info["max_forces_std"] == pytest.approx(spread[f.info["step"]], rel=1e-6)
        assert f.arrays["forces_std"].max() == pytest.approx(f.info["max_forces_std"])
    assert summary["uncertainty"]["max_forces_std_max_eV_A"] == pytest.approx(max(spread), rel=1e-6)


def _threshold_crossed_after_step_0(tmp_path: Path, committee_files) -> float:
    probe = simulate(_committee_atoms(committee_files), md_cfg(tmp_path / "probe", "md.steps=30"))
    first = float(read_csv(tmp_path / "probe" / "traj.csv")[0]["max_forces_std_eV_A"])
    return 0.5 * (first + probe["uncertainty"]["max_forces_std_max_eV_A"])


def test_real_committee_stop(tmp_path, committee_files):
    threshold = _threshold_crossed_after_step_0(tmp_path, committee_files)
    cfg = md_cfg(tmp_path, "md.steps=30", f"md.uncertainty.threshold={threshold}", "md.uncertainty.action=stop")
    with pytest.raises(UncertaintyStop, match=r"^md stopped at step [1-9]\d*: committee uncertainty max_forces_std "):
        simulate(_committee_atoms(committee_files), cfg)
    frames, rows, summary = assert_outputs_readable(tmp_path)
    assert summary["stopped"]["value"] > threshold and len(rows) == summary["stopped"]["step"]
    assert len(ase.io.read(tmp_path / "traj_uncertain.extxyz", ":")) == 1


def test_committee_cli_stop_exits_4(tmp_path, committee_files, monkeypatch, capsys):
    """`nnp md ckpt=[a.pt,b.pt] md.uncertainty.action=stop`: stops at the first frame above the threshold, exit 4."""
    threshold = _threshold_crossed_after_step_0(tmp_path, committee_files)
    out = tmp_path / "traj.extxyz"
    code, text = nnp_cli(
        monkeypatch, capsys, "md", f"ckpt=[{committee_files[0]},{committee_files[1]}]", f"input={ASPIRIN}",
        "md.steps=30", "dtype=float64", "md.log_interval=1", "md.write_interval=2",
        f"md.uncertainty.threshold={threshold}", "md.uncertainty.action=stop", f"output={out}",
    )
    assert code == 4, text[-3000:]
    line = error_line(text)
    frames, rows, summary = assert_outputs_readable(tmp_path)
    step = summary["stopped"]["step"]
    assert line.startswith(f"error: md stopped at step {step}: committee uncertainty max_forces_std ")
    assert step > 0 and summary["stopped"]["value"] > threshold
    assert len(rows) == step and all(float(r["max_forces_std_eV_A"]) <= threshold for r in rows)
    assert len(frames) == len(range(0, step, 2))
    (frame,) = ase.io.read(tmp_path / "traj_uncertain.extxyz", ":")
    assert frame.info["step"] == step
