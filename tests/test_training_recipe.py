"""The training recipe: weight averaging (EMA), LR warmup, loss stages, loss kinds, learning curves."""

from __future__ import annotations

import math

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from nnp import keys
from nnp.errors import NNPError
from nnp.training import schedules
from nnp.training.averaging import EMA
from nnp.training.loss import EnergyForceLoss
from nnp.training.schedules import LossStages, parse_stages, resolve_stages, weights_at

TINY_ANI = {"name": "ani", "hidden": [8], "hidden_per_element": None}


@pytest.fixture(scope="module")
def tiny_data(tiny_h5):
    from nnp.data import open_dataset
    from nnp.data.splits import make_split
    from nnp.data.statistics import fit_atomref

    data = open_dataset({"format": "hdf5", "path": str(tiny_h5), "energy_key": "gfn2.energy", "forces_key": "gfn2.forces",
                         "units": {"energy": "hartree", "length": "angstrom"}})
    split = make_split(len(data), {"train": 32, "val": 8, "test": 0}, seed=0)
    atomref, scale = fit_atomref(data, split["train"], data.elements())
    return data, split, atomref, scale


def _module(tiny_data, loss=None, optim=None):
    from nnp.potential import Potential
    from nnp.training import PotentialModule

    data, split, atomref, scale = tiny_data
    torch.manual_seed(0)
    pot = Potential.build(TINY_ANI, data.elements(), atomref, energy_scale=scale)
    return PotentialModule(pot, loss or {"energy_weight": 1.0, "forces_weight": 10.0},
                           {"name": "adam", "lr": 1e-3, "scheduler": {"name": "none"}, **(optim or {})})


def _fit(tiny_data, module, callbacks, batch_size=8, ckpt_path=None, root=None, **trainer):
    from nnp.training.datamodule import AtomsDataModule

    data, split, _, _ = tiny_data
    kwargs = dict(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                  enable_model_summary=False, inference_mode=False, num_sanity_val_steps=0)
    kwargs.update(trainer)
    t = pl.Trainer(callbacks=callbacks, default_root_dir=root, **kwargs)
    t.fit(module, datamodule=AtomsDataModule(data, split, batch_size=batch_size), ckpt_path=ckpt_path)
    return t


class _Record(pl.Callback):
    """The raw weights after every optimizer step (before validation swaps in the average)."""

    def __init__(self):
        self.weights: list[list[torch.Tensor]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append([p.detach().clone() for p in pl_module.potential.parameters()])


def _closed_form(weights: list[list[torch.Tensor]], decay: float) -> list[torch.Tensor]:
    """a_1 = w_1; a_k = d_k a_(k-1) + (1 - d_k) w_k with d_k = min(decay, k / (k + 9)), as one weighted sum."""
    k_max = len(weights)
    coeff = np.zeros(k_max)
    for k in range(1, k_max + 1):  # coefficient of w_k in a_K: (1 - d_k) prod_{j>k} d_j  (w_1 enters whole)
        c = 1.0 if k == 1 else 1.0 - min(decay, k / (k + 9))
        for j in range(k + 1, k_max + 1):
            c *= min(decay, j / (j + 9))
        coeff[k - 1] = c
    assert math.isclose(coeff.sum(), 1.0, rel_tol=1e-12)
    return [sum(float(c) * w[i] for c, w in zip(coeff, weights)) for i in range(len(weights[0]))]


def test_ema_equals_closed_form_average(tiny_data):
    """After 14 steps (past the ramp: d_k reaches 0.5 at k = 9) the averaged weights are the closed-form
    average of the recorded weights; training ends with the average in the model."""
    module, record, ema = _module(tiny_data), _Record(), EMA(0.5)
    _fit(tiny_data, module, [ema, record], max_steps=14, limit_val_batches=0)
    assert len(record.weights) == 14
    expected = _closed_form(record.weights, 0.5)
    for avg, want in zip(module.potential.parameters(), expected):
        torch.testing.assert_close(avg.detach(), want, rtol=1e-5, atol=1e-7)
    assert not all(torch.allclose(a, b) for a, b in zip(expected, record.weights[-1]))  # the average is not the last step


def test_resume_keeps_the_average(tiny_data, tmp_path):
    """A checkpoint holds the average (state_dict) and the raw weights; resuming restores both."""
    from pytorch_lightning.callbacks import ModelCheckpoint

    ckpt_dir = tmp_path / "ckpt"
    _fit(tiny_data, _module(tiny_data), [EMA(0.9), ModelCheckpoint(dirpath=ckpt_dir, save_last=True)],
         max_epochs=1, enable_checkpointing=True, root=tmp_path, limit_val_batches=1)
    ckpt = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert int(ckpt["averaging_state"]["n_averaged"]) == 4  # 32 structures / 8 per batch

    class Seen(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            self.n = int(ema._average_model.n_averaged)
            self.avg = {k: v.clone() for k, v in ema.averaged.state_dict().items()}
            self.raw = {k: v.clone() for k, v in pl_module.state_dict().items()}

    ema, seen = EMA(0.9), Seen()
    _fit(tiny_data, _module(tiny_data), [ema, seen], max_epochs=2, ckpt_path=str(ckpt_dir / "last.ckpt"),
         root=tmp_path, limit_val_batches=1)
    assert seen.n == 4
    for name, value in ckpt["state_dict"].items():
        torch.testing.assert_close(seen.avg[name], value)
    for name, value in ckpt["current_model_state"].items():
        torch.testing.assert_close(seen.raw[name], value)
    assert int(ema._average_model.n_averaged) == 8  # and it went on averaging


def test_saved_model_holds_the_averaged_weights(trained_run):
    """`nnp train` (EMA on by default): model.pt = the best checkpoint's averaged weights, not the raw ones."""
    from nnp.potential import Potential

    ckpt = torch.load(trained_run / "checkpoints" / "best.ckpt", weights_only=True)
    assert "current_model_state" in ckpt, "the default recipe should average the weights (ema.decay > 0)"
    model = Potential.load(trained_run / "model.pt")
    differs = False
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, ckpt["state_dict"][f"potential.{name}"].to(value.dtype))
        differs |= not torch.equal(value, ckpt["current_model_state"][f"potential.{name}"].to(value.dtype))
    assert differs
    assert (trained_run / "learning_curves.png").stat().st_size > 10_000


def test_warmup_scales_the_lr_of_the_first_steps(tiny_data):
    class LRs(pl.Callback):
        def __init__(self):
            self.lrs = []

        def on_train_start(self, trainer, pl_module):
            opt = trainer.optimizers[0]
            opt.register_step_pre_hook(lambda o, a, k: self.lrs.append(o.param_groups[0]["lr"]))

    seen = LRs()
    module = _module(tiny_data, optim={"warmup_steps": 3, "lr": 1e-3})
    t = _fit(tiny_data, module, [seen], max_steps=6, limit_val_batches=0)
    np.testing.assert_allclose(seen.lrs, [0.25e-3, 0.5e-3, 0.75e-3, 1e-3, 1e-3, 1e-3], rtol=1e-12)
    assert t.optimizers[0].param_groups[0]["lr"] == 1e-3  # the schedule's own LR is left as it was


def test_stages_change_the_weights_at_the_stated_epochs(tiny_data):
    stages = [{"from_epoch": 2, "forces_weight": 0.5}, {"from_epoch": 1, "energy_factor": 10}]

    class Weights(pl.Callback):
        def __init__(self):
            self.by_epoch = {}

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.by_epoch[trainer.current_epoch] = (pl_module.loss_fn.energy_weight, pl_module.loss_fn.forces_weight)

        def on_train_epoch_end(self, trainer, pl_module):
            assert (pl_module.val_loss_fn.energy_weight, pl_module.val_loss_fn.forces_weight) == (2.0, 10.0)

    seen = Weights()
    module = _module(tiny_data, loss={"energy_weight": 2.0, "forces_weight": 10.0, "stages": stages})
    t = _fit(tiny_data, module, [LossStages(stages), seen], max_epochs=3, limit_val_batches=0, limit_train_batches=1)
    assert seen.by_epoch == {0: (2.0, 10.0), 1: (20.0, 10.0), 2: (20.0, 0.5)}
    assert float(t.logged_metrics["loss_energy_weight"]) == 20.0  # logged each epoch
    assert float(t.logged_metrics["loss_forces_weight"]) == 0.5
    assert weights_at(5, {"energy_weight": 1, "forces_weight": 1}, parse_stages(stages)) == {"energy_weight": 10.0, "forces_weight": 0.5}


def test_cosine_decays_per_step_to_min_lr_with_warmup_in_epochs(tiny_data):
    """optim.scheduler.name=cosine over the run's 8 steps (2 epochs x 4 batches), warmup_epochs=1 -> 4 steps:
    lr_k = lr x (k+1)/5 (k < 4) x (1 + cos(pi k / 8)) / 2, reaching min_lr=0 after the last step."""
    lrs = []

    class LRs(pl.Callback):
        def on_train_start(self, trainer, pl_module):
            trainer.optimizers[0].register_step_pre_hook(lambda o, a, k: lrs.append(o.param_groups[0]["lr"]))

    module = _module(tiny_data, optim={"lr": 1e-3, "warmup_epochs": 1.0, "scheduler": {"name": "cosine", "min_lr": 0.0}})
    t = _fit(tiny_data, module, [LRs()], max_epochs=2, limit_val_batches=0)
    assert module.warmup_steps == 4
    want = [1e-3 * (min(k + 1, 5) / 5) * 0.5 * (1 + math.cos(math.pi * k / 8)) for k in range(8)]
    np.testing.assert_allclose(lrs, want, rtol=1e-9, atol=1e-15)
    assert t.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)
    assert module.optim_cfg.get("warmup_steps") is None  # warmup_steps > 0 would have won over warmup_epochs


@pytest.mark.parametrize("stages, needle", [
    ([{"from_epoch": 1, "energy_facter": 2}], "loss.stages[0].energy_facter"),
    ([{"energy_factor": 2}], "needs from_epoch"),
    ([{"from_epoch": 1, "energy_factor": 2, "energy_weight": 1}], "not both"),
    ([{"from_epoch": 1, "forces_weight": -1}], "a number >= 0"),
    ([{"from_fraction": 1.5, "energy_factor": 10}], "loss.stages[0].from_fraction=1.5: a fraction"),
    ([{"from_epoch": 3, "from_fraction": 0.5, "energy_factor": 10}], "one of them"),
])
def test_bad_stages(stages, needle):
    with pytest.raises(NNPError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        parse_stages(stages)


def test_stage_from_a_fraction_of_the_run(capsys, monkeypatch):
    """from_fraction: the same last fifth of a 15- or a 100-epoch run; left out (warned) without an epoch limit."""
    stages = parse_stages([{"from_fraction": 0.8, "energy_factor": 10}, {"from_epoch": 2, "forces_factor": 0.5}])
    assert resolve_stages(stages, 15) == [{"from_epoch": 2.0, "forces_factor": 0.5}, {"from_epoch": 12.0, "energy_factor": 10.0}]
    assert resolve_stages(stages, 100)[1]["from_epoch"] == 80.0
    base = {"energy_weight": 1.0, "forces_weight": 10.0}
    assert weights_at(11, base, resolve_stages(stages, 15)) == {"energy_weight": 1.0, "forces_weight": 5.0}
    assert weights_at(12, base, resolve_stages(stages, 15)) == {"energy_weight": 10.0, "forces_weight": 5.0}
    monkeypatch.setattr(schedules, "_noted", set())
    for _ in range(2):  # max_time only: the fraction stage is left out, said once
        assert resolve_stages(stages, -1) == [{"from_epoch": 2.0, "forces_factor": 0.5}]
    said = capsys.readouterr()
    assert " ".join((said.out + said.err).split()).count("no trainer.max_epochs") == 1


# ------------------------------------------------------ loss on a hand-computed batch
# Two structures (2 atoms, 1 atom); energy errors +0.4 eV and -0.3 eV; force errors below.
PRED = {keys.ENERGY: torch.tensor([1.4, -0.3], dtype=torch.float64),
        keys.FORCES: torch.tensor([[0.3, 0.0, -0.4], [0.0, 0.0, 0.0], [0.0, 0.02, 0.0]], dtype=torch.float64)}
BATCH = {keys.ENERGY: torch.tensor([1.0, 0.0], dtype=torch.float64), keys.N_ATOMS: torch.tensor([2, 1]),
         keys.FORCES: torch.zeros(3, 3, dtype=torch.float64)}


def _huber(x, d):
    return 0.5 * x * x if abs(x) <= d else d * (abs(x) - 0.5 * d)


@pytest.mark.parametrize("cfg, energy, forces", [
    # MSE per atom: dE/N = 0.2, -0.3 -> (0.04 + 0.09) / 2; forces: (0.09 + 0.16 + 0.0004) / 9 components
    ({"kind": "mse"}, (0.04 + 0.09) / 2, (0.09 + 0.16 + 0.0004) / 9),
    # MSE per structure: (0.16 + 0.09) / 2; per atom vector: |dF|^2 = 0.25, 0, 0.0004 over 3 atoms
    ({"kind": "mse", "per_atom_energy": False, "force_error": "vector"}, (0.16 + 0.09) / 2, (0.25 + 0.0004) / 3),
    # Huber delta 0.1: per atom 0.2 -> 0.1 (0.2 - 0.05) = 0.015, 0.3 -> 0.025; forces 0.3 -> 0.025, 0.4 -> 0.035,
    # 0.02 -> 0.5 * 0.0004 = 0.0002
    ({"kind": "huber", "huber_delta": 0.1}, (0.015 + 0.025) / 2, (0.025 + 0.035 + 0.0002) / 9),
    # Huber of the vectors' lengths 0.5, 0, 0.02 with delta 0.1: 0.045, 0, 0.0002
    ({"kind": "huber", "huber_delta": 0.1, "force_error": "vector"}, (0.015 + 0.025) / 2, (0.045 + 0.0 + 0.0002) / 3),
])
def test_loss_kinds_on_a_hand_computed_batch(cfg, energy, forces):
    loss_fn = EnergyForceLoss(energy_weight=2.0, forces_weight=3.0, **cfg)
    loss, metrics = loss_fn(PRED, BATCH)
    assert float(loss) == pytest.approx(2.0 * energy + 3.0 * forces, rel=1e-9)
    assert float(metrics["energy_mae"]) == pytest.approx(0.35)
    assert float(metrics["energy_per_atom_mae"]) == pytest.approx(0.25)
    assert float(metrics["forces_mae"]) == pytest.approx(0.72 / 9)
    assert _huber(0.2, 0.1) == pytest.approx(0.015)  # the hand values above follow torch's huber_loss (0.5 x^2 inside)


def test_learning_curves_from_a_metrics_csv(tmp_path):
    from nnp.training.curves import plot_learning_curves, read_epochs

    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,lr-Adam,step,train_loss_epoch,val_forces_mae,val_energy_per_atom_mae,val_loss\n"
                   ",0.001,0,,,,\n0,,3,,0.5,0.02,1.0\n0,,3,2.0,,,\n,0.0005,4,,,,\n1,,7,,0.4,0.015,0.8\n1,,7,1.5,,,\n")
    series = read_epochs(csv)
    assert series["epoch"] == [0.0, 1.0]
    assert series["lr-Adam"] == [0.001, 0.0005]  # the LR monitor's rows carry no epoch: they open the next one
    assert series["train_loss_epoch"] == [2.0, 1.5]
    png = plot_learning_curves(csv, tmp_path / "curves.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_optim_fused_selects_torchs_fused_kernel():
    """optim.fused=true: torch's fused Adam(W) (the same update as the foreach loop); off by default."""
    from nnp.registry import OPTIMIZERS

    torch.manual_seed(0)
    params = {f: [torch.nn.Parameter(torch.randn(7, 3))] for f in (False, True)}
    params[True][0].data.copy_(params[False][0].data)
    opts = {f: OPTIMIZERS.get("adamw")(params[f], {"lr": 1e-2, "fused": f}) for f in (False, True)}
    assert opts[True].defaults["fused"] and not opts[False].defaults.get("fused")
    assert not OPTIMIZERS.get("adam")(params[False], {}).defaults.get("fused")
    for _ in range(3):
        grad = torch.randn(7, 3)
        for f in (False, True):
            params[f][0].grad = grad.clone()
            opts[f].step()
    torch.testing.assert_close(params[True][0], params[False][0], rtol=1e-6, atol=1e-7)
