"""``nnp train``: data -> split -> reference energies -> Lightning fit -> model.pt.

The run directory (Hydra's ``hydra.run.dir``) receives: ``config.yaml`` (the
resolved config), ``split.npz``, ``checkpoints/`` (best and last Lightning
checkpoints), ``csv/metrics.csv`` and ``tensorboard/`` logs, the deployable
``model.pt`` and ``test_report.json`` (+ parity plot).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nnp.data import open_dataset
from nnp.data.splits import load_split, make_split, save_split
from nnp.data.statistics import choose_energy_scale, fit_atomref, force_rms
from nnp.errors import NNPError
from nnp.potential import Potential
from nnp.report import console, table, write_json

# Rank 0 hands its run directory to the processes Lightning launches for the
# other ranks (they inherit the environment; their Hydra run dir is the cwd).
_RUN_DIR_ENV = "NNP_RUN_DIR"


def _is_rank_zero() -> bool:
    from pytorch_lightning.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def _run_dir() -> Path:
    import os

    from hydra.core.hydra_config import HydraConfig

    if not _is_rank_zero() and os.environ.get(_RUN_DIR_ENV):
        return Path(os.environ[_RUN_DIR_ENV])
    if HydraConfig.initialized():
        run_dir = Path(HydraConfig.get().runtime.output_dir).resolve()
        os.environ[_RUN_DIR_ENV] = str(run_dir)
        return run_dir
    raise NNPError("train must run under Hydra (use the `nnp train` command)")


def _split(cfg: dict[str, Any], dataset, run_dir: Path) -> dict[str, np.ndarray]:
    from nnp.data.splits import fingerprint

    fp = fingerprint(dataset.groups(), dataset.energies())
    if cfg.get("split_file"):
        split = load_split(cfg["split_file"], len(dataset), fingerprint=fp)
    else:
        spec = dict(cfg.get("split") or {})
        by = str(spec.pop("by", "random"))
        seed = int(spec.pop("seed", 0))
        if by not in ("random", "group"):
            raise NNPError(f"data.split.by={by!r}: choose random or group")
        groups = dataset.groups() if by == "group" else None
        split = make_split(len(dataset), spec, groups=groups, seed=seed)
    if _is_rank_zero():
        meta = {"path": cfg.get("path"), "by": (cfg.get("split") or {}).get("by"), "seed": (cfg.get("split") or {}).get("seed")}
        save_split(run_dir / "split.npz", split, len(dataset), meta, fingerprint=fp)
    return split


def build_trainer(cfg: DictConfig, run_dir: Path):
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import (
        EarlyStopping,
        LearningRateMonitor,
        ModelCheckpoint,
        RichProgressBar,
    )
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    from nnp.training.callbacks import recipe_callbacks

    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    callbacks = [
        ModelCheckpoint(dirpath=run_dir / "checkpoints", filename="best", monitor="val_loss", mode="min", save_last=True),
        EarlyStopping(monitor=cfg.early_stopping.monitor, patience=int(cfg.early_stopping.patience), min_delta=float(cfg.early_stopping.min_delta), mode="min"),
        LearningRateMonitor(logging_interval="epoch"),
        RichProgressBar(leave=False),
        *recipe_callbacks(cfg, run_dir),  # ema, loss.stages, learning_curves.png
    ]
    # checkpoint and stop on SIGTERM/SIGINT (Slurm: SIGUSR1 + requeue); RNG state in checkpoints
    from nnp.training.checkpoints import RandomState, training_plugins
    from nnp.training.signals import GracefulStop, in_slurm_batch

    callbacks += [GracefulStop(run_dir / "checkpoints" / "last.ckpt", slurm=in_slurm_batch()), RandomState()]
    loggers = [
        CSVLogger(save_dir=str(run_dir), name="csv", version=""),
        TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False),
    ]
    precision = "64-true" if cfg.dtype == "float64" else trainer_kwargs.pop("precision", "32-true")
    trainer_kwargs.pop("precision", None)
    # Lightning's model summary (a table with "FLOPs" and "Modules in train mode") and its
    # info lines only with verbose=true: our own tables say what matters.
    verbose = bool(cfg.get("verbose", False))
    trainer_kwargs.setdefault("enable_model_summary", verbose)
    if verbose:
        _quiet_lightning(level="INFO")
    try:
        return pl.Trainer(
            default_root_dir=str(run_dir), callbacks=callbacks, logger=loggers,
            inference_mode=False,  # validation computes forces by autograd
            precision=precision, plugins=training_plugins(), **trainer_kwargs,
        )
    except (TypeError, ValueError) as err:
        raise NNPError(f"trainer config: {err}") from None


def _quiet_lightning(level: str = "WARNING") -> None:
    """Keep Lightning's console to warnings (``verbose=true``: ``level="INFO"``): our own
    tables say what matters. (matplotlib's font-cache line is silenced in nnp.cli.)"""
    import logging
    import warnings

    for name in ("pytorch_lightning", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(level)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*isinstance.treespec, LeafSpec.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*")
    # on a machine with Slurm installed (a login node), Lightning hints at srun for every run;
    # nnp's job scripts (slurm/) use srun where it matters
    warnings.filterwarnings("ignore", message=".*The `srun` command is available.*")


def _task_overrides() -> list[str]:
    """The command line's overrides of this job (``model.hidden=[64]``, ...)."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def split_digest(split: dict[str, np.ndarray]) -> str:
    """A short fingerprint of a split's index sets: models with the same digest held out the same data."""
    import hashlib

    h = hashlib.sha1()
    for part in ("train", "val", "test"):
        h.update(part.encode())
        h.update(np.sort(np.asarray(split[part], dtype=np.int64)).tobytes())
    return h.hexdigest()[:16]


def trainer_rank() -> int:
    """This process's global rank (0 without data-parallel training)."""
    return 0 if _is_rank_zero() else 1


def _fit(cfg, dataset, split, model_cfg, loss_cfg, species, atomref, scale, dtype, out_dir: Path,
         ckpt_path: str | None = None, start: Potential | None = None) -> tuple[Potential, dict]:
    """Train one potential (Lightning) with checkpoints and logs in ``out_dir``; the best weights.
    ``start``: fine-tune this potential (frozen parameters already marked) instead of a new one."""
    from nnp.training import PotentialModule
    from nnp.training.datamodule import AtomsDataModule

    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    if start is None:
        terms = OmegaConf.to_container(cfg.terms, resolve=True) if cfg.get("terms") else None
        potential = Potential.build(model_cfg, species, atomref, energy_scale=max(scale, 1e-3), terms=terms).to(dtype)
    else:
        potential = start.to(dtype)
    n_params = sum(p.numel() for p in potential.parameters())
    n_train = sum(p.numel() for p in potential.parameters() if p.requires_grad)
    trainable = f" ({n_train:,} trainable)" if n_train < n_params else ""
    with_terms = f", terms {', '.join(t.name for t in potential.terms)}" if len(potential.terms) else ""
    console.print(f"model: {model_cfg['name']}, {n_params:,} parameters{trainable}, cutoff {potential.cutoff} Å, {cfg.dtype}{with_terms}")
    module = PotentialModule(potential, loss_cfg, OmegaConf.to_container(cfg.optim, resolve=True))
    datamodule = AtomsDataModule(dataset, split, batch_size=data_cfg.get("batch_size", 32), num_workers=data_cfg.get("num_workers", 0),
                                 pair_cutoff=potential.cutoff if data_cfg.get("cache_pairs", True) else None,
                                 pair_cache_bytes=int(data_cfg.get("pair_cache_mb", 256) * 2**20))
    trainer = build_trainer(cfg, out_dir)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if best:
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
    info = {
        "epochs": int(trainer.current_epoch),
        "best_val_loss": float(trainer.checkpoint_callback.best_model_score) if best else None,
        "n_parameters": n_params,
    }
    module.potential.fitting = False  # terms not in the labels (d3 in_labels=false) join again
    return module.potential.cpu().eval(), info


def run(cfg: DictConfig, run_dir: Path | None = None) -> dict[str, Any]:
    """``nnp train``; ``run_dir``: train there instead of Hydra's run directory (``nnp active-learn``)."""
    import pytorch_lightning as pl

    _quiet_lightning()

    from nnp.evaluate import parity_plot, predict_dataset, print_metrics

    t0 = time.time()
    run_dir = Path(run_dir) if run_dir is not None else _run_dir()
    model_path = run_dir / str(cfg.model_file)
    # automatic resume: continue a checkpoint of the same config, refuse another config (nnp.training.resume)
    from nnp.training import resume as resuming

    plan = resuming.decide(OmegaConf.to_container(cfg, resolve=True), run_dir, model_path)
    if plan.clean and _is_rank_zero():
        resuming.clean_run(run_dir)
    if cfg.dtype not in ("float32", "float64"):
        raise NNPError(f"dtype={cfg.dtype!r}: choose float32 or float64")
    dtype = getattr(torch, str(cfg.dtype))
    pl.seed_everything(int(cfg.seed), verbose=False)
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    loss_cfg = OmegaConf.to_container(cfg.loss, resolve=True)

    from nnp.terms.checks import check_terms_setup

    check_terms_setup(cfg, data_cfg, loss_cfg)  # before reading data: terms and their labels fit together

    from nnp.training import finetune

    base = finetune.prepare(cfg, _task_overrides())  # finetune.from: checked before any work
    dataset = open_dataset(data_cfg)
    if loss_cfg.get("forces_weight", 0) > 0 and not dataset.has_forces:
        console.print("[yellow]note:[/] the data has no forces: training on energies only (loss.forces_weight=0)")
        loss_cfg["forces_weight"] = 0.0
    split = _split(data_cfg, dataset, run_dir)
    if len(split["val"]) == 0:
        raise NNPError("the validation split is empty: set data.split.val > 0 (it drives checkpoints and early stopping)")
    species = dataset.elements()
    if base is not None:
        finetune.check_elements(species, base, data_cfg.get("path"))
        species = base.species
        starts = finetune.start_members(
            base, dataset, split["train"], list(cfg.finetune.freeze), bool(cfg.finetune.refit_atomref), dtype,
            int(data_cfg.get("batch_size", 32)) * 2,
        )
        atomref, scale = starts[0][0].atomref.double().numpy(), float(starts[0][0].energy_scale)
        residual_rms, forces_rms = scale, None  # the base model's output scale is kept
        scale_kind = "the base model's"
    else:
        atomref, residual_rms = fit_atomref(dataset, split["train"], species)
        scale_kind = str(cfg.get("energy_scale") or "residual_rms")
        forces_rms = force_rms(dataset, split["train"]) if scale_kind == "force_rms" else None
        scale = choose_energy_scale(scale_kind, residual_rms, forces_rms)
    from ase.data import chemical_symbols

    console.print(table(
        f"data: {data_cfg['path']}",
        ["", "value"],
        [
            ["structures", f"{len(dataset)} ({dataset.n_skipped} skipped: NaN labels)"],
            ["split train/val/test", "/".join(str(len(split[p])) for p in ("train", "val", "test"))],
            ["elements", ", ".join(chemical_symbols[z] for z in species)],
            ["reference energies (eV)", ", ".join(f"{chemical_symbols[z]} {e:.3f}" for z, e in zip(species, atomref))],
            ["residual RMS per atom (eV)", f"{residual_rms:.4f}"],
            *([["force RMS (eV/Å)", f"{forces_rms:.4f}"]] if forces_rms else []),
            ["network output scale (eV)", f"{scale:.4f} ({scale_kind})"],
            ["forces", "yes" if dataset.has_forces else "no"],
        ],
    ))

    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    ensemble = dict(OmegaConf.to_container(cfg.ensemble, resolve=True)) if cfg.get("ensemble") is not None else {}
    size = int(ensemble.get("size", 1))
    if base is not None:
        size = len(base.members)  # ensemble.size checked by finetune.prepare
        model_cfg = base.model_config
        from omegaconf import open_dict

        with open_dict(cfg):  # config.yaml records the architecture that was trained
            cfg.model = OmegaConf.create(model_cfg)
        console.print(f"fine-tuning {base.path} ({base.kind}{f', {size} members' if size > 1 else ''}): "
                      f"frozen {list(cfg.finetune.freeze) or 'nothing'}, reference energies "
                      f"{'refitted on this data' if cfg.finetune.refit_atomref else 'kept from the base'}")
    bootstrap = bool(ensemble.get("bootstrap", False))
    if size < 1:
        raise NNPError(f"ensemble.size={size}: must be at least 1")
    if _is_rank_zero():
        from nnp.outputs import write_bytes

        write_bytes(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True).encode())
    shared = {
        "data": data_cfg,
        "split_file": str(run_dir / "split.npz"),
        "split_digest": split_digest(split),
        "run_dir": str(run_dir),
    }
    members: list[Potential] = []
    for k in range(size):
        member_dir = run_dir if size == 1 else run_dir / "members" / str(k)
        seed = int(cfg.seed) + k
        train_idx = split["train"]
        if bootstrap and size > 1:
            # each member sees a resample (with replacement) of the same training structures
            train_idx = np.sort(np.random.default_rng(seed).choice(train_idx, size=len(train_idx), replace=True))
        if size > 1:
            console.print(f"[bold]committee member {k + 1}/{size}[/] (seed {seed}{', bootstrap' if bootstrap else ''}) in {member_dir}")
        pl.seed_everything(seed, verbose=False)
        done = resuming.finished_member(plan, member_dir / str(cfg.model_file)) if size > 1 else None
        if done is not None:  # a committee member finished before the interruption: kept as it is
            console.print(f"member {k + 1}/{size} finished before: kept {member_dir / str(cfg.model_file)}")
            members.append(done)
            continue
        ckpt = resuming.resume_point(plan, member_dir)
        start = starts[k][0] if base is not None else None
        potential, fit_info = _fit(cfg, dataset, {**split, "train": train_idx}, model_cfg, loss_cfg, species, atomref, scale, dtype, member_dir,
                                   ckpt_path=ckpt, start=start)
        if trainer_rank() != 0:
            continue
        metadata = {**shared, **fit_info, "seed": seed, "train_seconds": round(time.time() - t0, 1)}
        if base is not None:
            metadata["finetune"] = finetune.lineage(base, k, list(cfg.finetune.freeze), bool(cfg.finetune.refit_atomref))
        potential.metadata = metadata
        if size > 1:
            metadata.update(member=k, bootstrap=bootstrap)
            potential.save(member_dir / str(cfg.model_file), metadata)
        members.append(potential)
    if trainer_rank() != 0:
        return {}
    if size == 1:
        model = members[0]
        model.save(model_path, model.metadata)
    else:
        from nnp.committee import Committee

        sources = [str(run_dir / "members" / str(k) / str(cfg.model_file)) for k in range(size)]
        model = Committee(members, sources=sources, metadata={**shared, "ensemble_size": size, "bootstrap": bootstrap})
        if base is not None:
            model.metadata["finetune"] = finetune.lineage(base, None, list(cfg.finetune.freeze), bool(cfg.finetune.refit_atomref))
        model.save(model_path)
    result: dict[str, Any] = {"model": str(model_path), "run_dir": str(run_dir)}
    if cfg.evaluate_test and len(split["test"]) > 0:
        report = predict_dataset(model, dataset, split["test"], batch_size=int(data_cfg.get("batch_size", 32)) * 2)
        metrics = report["metrics"]
        metrics.update(model=str(model_path), data=str(data_cfg["path"]), split="test")
        print_metrics(metrics, "test split")
        if size > 1:
            from nnp.evaluate import print_uncertainty, uncertainty_report

            metrics["n_members"] = size
            metrics["uncertainty"] = uncertainty_report(report["samples"])
            print_uncertainty(metrics["uncertainty"])
        write_json(run_dir / "test_report.json", metrics)
        parity_plot(report["samples"], run_dir / "test_report.png", "test split")
        result["test"] = metrics
    console.print(f"[bold green]done[/] in {time.time() - t0:.0f} s: model [bold]{model_path}[/], run directory {run_dir}")
    return result
