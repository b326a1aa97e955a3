"""The config schema: every bad value is one line (key, value, what is allowed), exit code 2,
no traceback, before any work starts; every shipped config passes.

Most cases run the real command line in-process (``nnp.cli.main`` returns the exit
code): validation fails before Hydra runs a job, so each case costs one composition.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import fields

import pytest
import yaml
from conftest import REPO, assert_clean_error, run_nnp

from nnp import cli
from nnp.config import schema
from nnp.config.commands import GROUPS
from nnp.config.validate import check_group
from nnp.errors import NNPError

MD = ["ckpt=model.pt", "input=start.xyz"]

# (command, overrides, what the one error line must name)
BAD = [
    ("train", ["trainer.max_epochs=-3"], ["trainer.max_epochs=-3", ">= 1"]),
    ("train", ["data.batch_size=0"], ["data.batch_size=0", ">= 1"]),
    ("train", ["optim.lr=-1"], ["optim.lr=-1", "> 0"]),
    ("train", ["loss.forces_weight=-1"], ["loss.forces_weight=-1", ">= 0"]),
    ("train", ["loss.stages=[{from_fraction:2,energy_factor:10}]"], ["loss.stages[0].from_fraction=2", "[0, 1]"]),
    ("train", ["loss.stages=[{from_epoch:1,from_fraction:0.5}]"], ["loss.stages[0]", "one of them"]),
    ("train", ["loss.stages=[{from_fraction:0.5,energy_factr:10}]"], ["loss.stages[0].energy_factr", "not a stage setting"]),
    ("train", ["loss.forces_weight=0", "loss.energy_weight=0"], ["loss.energy_weight=0", "at least one"]),
    ("md", [*MD, "md.steps=abc"], ["md.steps=abc", "whole number"]),
    ("train", ["model.hidden=[0]"], ["model.hidden=[0]", ">= 1"]),
    ("train", ["model=schnet", "model.readout_hidden=[32,0]"], ["model.readout_hidden=[32,0]"]),
    ("train", ["data.split.train=2.0"], ["data.split.train=2.0", "fraction in [0, 1]", "count"]),
    ("train", ["data.split.val=0.5", "data.split.test=0.5"], ["data.split=", "sum to at most 1"]),
    ("train", ["data.split.train=-5"], ["data.split.train=-5"]),
    ("train", ["data.split.val=0"], ["data.split.val=0", "more than 0"]),
    ("train", ["model=nosuchmodel"], ["model=nosuchmodel", "ani, ani2x, hipnn, painn, schnet"]),
    ("train", ["model.hiden=3"], ["'model.hiden' is not a config key", "model.hidden"]),
    ("train", ["+model.depth=3"], ["model.depth=3", "not a setting of model 'ani'"]),
    ("train", ["model.radial_cutoff=0.5"], ["model.radial_cutoff=0.5", "smallest shift"]),
    ("train", ["model.radial_shifts=[6.0,7.0]"], ["model.radial_cutoff=5.2", "smallest shift"]),
    ("train", ["model.angular_cutoff=-1"], ["model.angular_cutoff=-1", "> 0"]),
    ("train", ["model.activation=relu"], ["model.activation=relu", "celu"]),
    ("train", ["model=hipnn", "model.soft_max=9"], ["model.soft_max=9", "model.cutoff"]),
    ("train", ["model=painn", "model.cutoff=0"], ["model.cutoff=0", "> 0"]),
    ("train", ["~model.hidden_per_element", "+model.hidden_per_element={Hx: [8]}"], ["model.hidden_per_element.Hx", "element symbol"]),
    ("train", ["model.hidden_per_element.H=[8,0]"], ["model.hidden_per_element.H=[8,0]", ">= 1"]),
    ("train", ["dtype=float16"], ["dtype=float16", "float32, float64"]),
    ("train", ["optim.name=rmsprop"], ["optim.name=rmsprop", "adam, adamw, sgd"]),
    ("train", ["optim.scheduler.name=step"], ["optim.scheduler.name=step", "cosine, none, plateau"]),
    ("train", ["ensemble.size=0"], ["ensemble.size=0", ">= 1"]),
    ("train", ["ensemble.size=2.5"], ["ensemble.size=2.5"]),
    ("train", ["ensemble.bootstrap=maybe"], ["ensemble.bootstrap=maybe", "true or false"]),
    ("train", ["verbose=loud"], ["verbose=loud", "true or false"]),
    ("train", ["trainer.devices=0"], ["trainer.devices=0"]),
    ("train", ["trainer.max_time=3h"], ["trainer.max_time=3h", "DD:HH:MM:SS"]),
    ("train", ["data.units.energy=erg"], ["data.units.energy=erg", "hartree"]),
    ("train", ["data.format=xyz"], ["data.format=xyz", "hdf5, ase"]),
    ("train", ["data=ani1x"], ["data.path is not set"]),
    ("train", ["-m", "trainer.max_epochs=1,-3"], ["trainer.max_epochs=-3"]),
    ("train", ["model.hidden=[0"], ["model.hidden=[0"]),
    ("evaluate", ["ckpt=model.pt", "split=foo"], ["split=foo", "all, train, val, test"]),
    ("evaluate", ["ckpt=model.pt", "calibrate=yes please"], ["calibrate='yes please'", "true or false"]),
    ("evaluate", ["ckpt=[a.pt,b.pt]", "calibrate=true"], ["calibrate=true", "one (committee) file"]),
    ("evaluate", ["ckpt=model.pt", "batch_size=0"], ["batch_size=0"]),
    ("evaluate", [], ["ckpt is not set"]),
    ("predict", ["ckpt=model.pt"], ["input is not set"]),
    ("predict", ["ckpt=[]", "input=x.xyz"], ["ckpt=[]", "a model file"]),
    ("predict", ["ckpt=model.pt", "input=x.xyz", "dtype=half"], ["dtype=half"]),
    ("md", [*MD, "md.ensemble=nph"], ["md.ensemble=nph", "nve, nvt, langevin, npt"]),
    ("md", [*MD, "md.thermostat=andersen"], ["md.thermostat=andersen", "berendsen, langevin, nose_hoover"]),
    ("relax", ["ckpt=model.pt", "input=start.xyz", "optimizer=adam"], ["optimizer=adam", "bfgs, fire, lbfgs"]),
    ("md", [*MD, "md.max_time=soon"], ["md.max_time=soon", "DD:HH:MM:SS"]),
    ("md", [*MD, "md.timestep_fs=0"], ["md.timestep_fs=0", "> 0"]),
    ("md", [*MD, "md.max_force=-1"], ["md.max_force=-1", ">= 0, or null"]),
    ("md", [*MD, "md.max_temperature_K=hot"], ["md.max_temperature_K=hot"]),
    ("md", [*MD, "md.min_distance=-0.1"], ["md.min_distance=-0.1"]),
    ("md", [*MD, "md.uncertainty.threshold=-1"], ["md.uncertainty.threshold=-1", ">= 0, or null"]),
    ("md", [*MD, "md.uncertainty.action=go"], ["md.uncertainty.action=go", "flag, stop"]),
    ("md", [*MD, "md.uncertainty.min_interval=0"], ["md.uncertainty.min_interval=0"]),
    ("md", [*MD, "md.uncertainty.max_frames=-1"], ["md.uncertainty.max_frames=-1"]),
    ("md", [*MD, "threads=many"], ["threads=many", "auto"]),
    ("md", [*MD, "md.uncertainty.tresh=1"], ["'md.uncertainty.tresh' is not a config key", "threshold"]),
]


def _one_error(capsys, code: int, *needles: str) -> str:
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert code == 2, text
    assert "Traceback" not in text, text
    errors = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and len(captured.err.strip().splitlines()) == 1, captured.err
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


@pytest.mark.parametrize("command,overrides,needles", BAD, ids=[" ".join(c[1]) or c[0] for c in BAD])
def test_bad_value_is_one_line(command, overrides, needles, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run directory must not appear
    t0 = time.perf_counter()
    line = _one_error(capsys, cli.main([command, *overrides]), *needles)
    assert line.startswith("error: config error: "), line
    assert time.perf_counter() - t0 < 5, "validation must not read data or start training"
    assert list(tmp_path.iterdir()) == []


def test_real_command_line_refuses_before_work(tmp_path):
    """A fresh process: exit code 2, one line, no run directory, no torch/Lightning start-up."""
    t0 = time.perf_counter()
    res = run_nnp("train", "trainer.max_epochs=-3", f"hydra.run.dir={tmp_path / 'run'}")
    elapsed = time.perf_counter() - t0
    assert res.returncode == 2
    assert_clean_error(res, "config error: trainer.max_epochs=-3")
    assert not (tmp_path / "run").exists()
    assert elapsed < 20, elapsed  # Python + Hydra start-up; importing Lightning alone takes longer


def test_missing_group_option_lists_only_real_configs(capsys):
    line = _one_error(capsys, cli.main(["train", "model=nosuchmodel"]))
    assert "provider" not in line and "search path" not in line.lower()
    line = _one_error(capsys, cli.main(["train", "optim=lion"]), "optim=lion")
    assert "adam, adamw, sgd" in line


# ------------------------------------------------------------ good configs


@pytest.mark.parametrize("overrides", [
    [],
    ["model=schnet"], ["model=painn"], ["model=hipnn"],
    ["data=qm9", "data.path=qm9.h5", "loss=energy"],
    ["data=ani1x", "data.path=x.h5", "data.split.train=110000", "data.split.val=10000", "data.split.test=null"],
    ["data=ase", "data.path=x.extxyz", "data.forces_key=null"],
    ["optim=adam"], ["optim=sgd"], ["optim.scheduler=null"], ["optim.name=AdamW", "optim.scheduler.name=none"],
    ["trainer=cpu"], ["trainer=gpu"], ["trainer=ddp"], ["trainer.max_epochs=-1", "trainer.max_time=00:01:00:00"],
    ["+trainer.accumulate_grad_batches=2"], ["+data.something=1"], ["++data.other=2"],
    ["ensemble.size=3", "ensemble.bootstrap=true", "verbose=true", "dtype=float64"],
    ["model.hidden=[]", "model.hidden_per_element=null", "model.radial_shifts=[0.5,1.0]", "model.radial_cutoff=4"],
    ["data.units.energy=Hartree", "data.units.length=null"],
    ["-m", "model=ani,schnet", "trainer.max_epochs=1,2"],
])
def test_shipped_train_configs_pass(overrides):
    cli.validate_overrides("train", overrides)


@pytest.mark.parametrize("command,overrides", [
    ("evaluate", ["ckpt=model.pt"]),
    ("evaluate", ["ckpt=[a.pt,b.pt]", "data=ani1x", "data.path=x.h5", "split=test", "dtype=float64"]),
    ("evaluate", ["ckpt=committee.pt", "calibrate=true", "calibrate_data=val.extxyz"]),
    ("predict", ["ckpt=model.pt", "input=x.xyz", "index=0", "format=extxyz"]),
    ("predict", ["ckpt=[a.pt,b.pt,c.pt]", "input=x.xyz"]),
    ("md", [*MD, "index=1", "md.ensemble=nvt", "md.max_force=null", "md.uncertainty.threshold=0.3",
            "md.uncertainty.action=stop", "threads=2", "md.steps=1e4"]),
])
def test_shipped_command_configs_pass(command, overrides):
    cli.validate_overrides(command, overrides)


def test_every_yaml_key_is_declared():
    """Each group's YAML files pass their schema as they are (no undeclared key, every default allowed)."""
    for group_name, cls in GROUPS.items():
        for path in sorted((REPO / "conf" / group_name).glob("*.yaml")):
            data = yaml.safe_load(path.read_text())
            data.pop("defaults", None)
            if group_name == "data" and str(data.get("path", "")).startswith("$"):
                data["path"] = "file.h5"  # an interpolation, resolved when composed
            if data.get("path") == "???":
                data["path"] = "file.h5"
            if data.get("calculator") == "???":  # labeler=ase: required on the command line
                data["calculator"] = "ase.calculators.emt:EMT"
            check_group(data, cls, group_name)


def test_model_schemas_match_the_constructors():
    """Every declared model setting is an argument of the architecture (and the other way round)."""
    from nnp.models import MODELS
    from nnp.models.ani import AEV

    for name, cls in schema.MODELS.items():
        params = set(inspect.signature(MODELS[name]).parameters) - {"species", "self", "aev_kwargs"}
        if name == "ani":
            params |= set(inspect.signature(AEV).parameters) - {"n_species"}
        declared = {f.name for f in fields(cls)} - {"name"}
        assert declared == params, (name, declared ^ params)


def test_schema_names_build():
    """The activation, radial-basis and cutoff names the schema allows are the ones the models build."""
    from nnp.nn.cutoff import build_cutoff
    from nnp.nn.mlp import build_activation
    from nnp.nn.radial import build_radial_basis

    for name in schema.ACTIVATIONS:
        build_activation(name)
    for name in schema.RADIAL_BASES:
        build_radial_basis(name, 4, 5.0)
    for name in schema.CUTOFF_FNS:
        build_cutoff(name, 5.0)


# --------------------------------------------------------- users' configs


def test_users_config_dir_gets_the_same_checks(tmp_path, capsys):
    conf = tmp_path / "my_conf"
    (conf / "model").mkdir(parents=True)
    (conf / "model" / "big_ani.yaml").write_text("name: ani\nhidden: [256, 256]\nhidden_per_element: null\n")
    (conf / "model" / "zero_ani.yaml").write_text("name: ani\nhidden: [0]\n")
    (conf / "model" / "typo_ani.yaml").write_text("name: ani\nhiden: [64]\n")
    (conf / "model" / "alien.yaml").write_text("name: transformer\n")
    cli.validate_overrides("train", ["--config-dir", str(conf), "model=big_ani"])
    _one_error(capsys, cli.main(["train", "--config-dir", str(conf), "model=zero_ani"]), "model.hidden=[0]")
    _one_error(capsys, cli.main(["train", "--config-dir", str(conf), "model=typo_ani"]), "model.hiden")
    _one_error(capsys, cli.main(["train", "--config-dir", str(conf), "model=alien"]), "model.name=transformer", "ani")
    line = _one_error(capsys, cli.main(["train", f"--config-dir={conf}", "model=nosuchmodel"]))
    assert "big_ani" in line and "schnet" in line and "provider" not in line


# -------------------------------------------------------- plain commands


@pytest.mark.parametrize("argv,needles", [
    (["export", "ckpt=model.pt", "dtype=float16"], ["nnp export: dtype=float16", "float32, float64"]),
    (["export", "ckpt=model.pt", "check=maybe"], ["check=maybe", "true or false"]),
    (["export", "ckpt=model.pt", "optput=x.ts"], ["optput=x.ts", "unknown option 'optput'", "output"]),
    (["export", "output=x.ts"], ["ckpt is not set"]),
    (["export", "ckpt="], ["ckpt="]),
    (["data", "info", "x.h5", "max_force=-1"], ["nnp data info: max_force=-1", "> 0"]),
    (["data", "info", "x.h5", "format=xyz"], ["format=xyz", "hdf5, ase"]),
    (["data", "info", "x.h5", "energy_unit=erg"], ["energy_unit=erg"]),
    (["data", "prepare", "qm9", "overwrite=maybe", "out=q.h5"], ["overwrite=maybe", "true or false"]),
    (["data", "prepare", "ani1x", "source=x.h5"], ["out is not set"]),
])
def test_plain_commands_check_their_options(argv, needles, capsys):
    _one_error(capsys, cli.main(argv), *needles)


def test_export_and_data_option_types():
    from nnp.config.options import ExportOptions, PrepareANI1xOptions, parse_options

    assert parse_options("nnp export", ExportOptions, ["ckpt=[a.pt, b.pt]", "check=false", "dtype=null"]) == {
        "ckpt": ["a.pt", "b.pt"], "check": False, "dtype": None}
    assert parse_options("nnp export", ExportOptions, ["ckpt=run/model.pt"]) == {"ckpt": "run/model.pt"}
    # data-set keys with parentheses pass unquoted
    opts = parse_options("x", PrepareANI1xOptions, ["out=o.h5", "energy_key=ccsd(t)_cbs.energy", "forces_key=null"])
    assert opts == {"out": "o.h5", "energy_key": "ccsd(t)_cbs.energy", "forces_key": None}


# --------------------------------------------------------------- registry


def test_registry_builds_every_optimizer_and_schedule():
    import torch

    from nnp.registry import OPTIMIZERS, SCHEDULERS

    params = [torch.nn.Parameter(torch.zeros(3))]
    for name in OPTIMIZERS:
        opt = OPTIMIZERS.get(name.upper())(params, {"lr": 0.01, "weight_decay": 0.0})
        assert isinstance(opt, torch.optim.Optimizer)
        for kind in SCHEDULERS:
            schedule = SCHEDULERS.get(kind)(opt, {"factor": 0.5, "patience": 2}, 10)
            assert schedule is None if kind == "none" else "scheduler" in schedule
    with pytest.raises(NNPError, match="optim.name=lion: unknown optimizer; one of adam, adamw, sgd"):
        OPTIMIZERS.get("lion")


def test_readme_documents_the_schema():
    text = (REPO / "README.md").read_text()
    assert "nnp/config/" in text


def test_config_package_stays_light():
    """Checking a config must not import torch or Lightning (a bad value is refused at once)."""
    import subprocess
    import sys

    code = ("import sys; from nnp.cli import validate_overrides; validate_overrides('train', ['model=schnet']); "
            "print(sorted(m for m in ('torch', 'pytorch_lightning') if m in sys.modules))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.strip() == "[]", res.stdout
