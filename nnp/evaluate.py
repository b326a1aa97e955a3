"""Error report of a model on a dataset: table, JSON and a parity plot.

    nnp evaluate ckpt=RUN/model.pt [data=ani1x data.path=FILE] [split=test] output=report.json

Without ``data``, the data the model was trained on (stored in model.pt) is
used. ``split=train|val|test`` restricts to that part of the split saved in
the model's run directory (split.npz beside model.pt).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from nnp import keys
from nnp.calculator import batch_to
from nnp.data import collate, open_dataset
from nnp.data.datasets import AtomsDataset
from nnp.data.splits import load_split
from nnp.errors import NNPError
from nnp.potential import Potential
from nnp.report import console, table, write_json
from nnp.units import EV_TO_KCAL_MOL

# Points kept for the parity plot (statistics use every point).
_PLOT_POINTS = 100_000


def predict_dataset(
    potential: Potential,
    dataset: AtomsDataset,
    indices: np.ndarray,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Run the model over ``dataset[indices]`` and return metrics (eV, eV/Å) and plot samples."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    dtype = potential.atomref.dtype
    potential = potential.to(device).eval()
    e_pred, e_ref, n_at, e_offset = [], [], [], []
    f_abs = f_sq = 0.0
    f_count = 0
    f_pred_keep, f_ref_keep = [], []
    layer_sum = None
    with Progress(
        TextColumn("[bold]evaluating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=not progress, transient=True,
    ) as bar:
        task = bar.add_task("eval", total=len(indices))
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            batch = batch_to(collate([dataset[int(i)] for i in idx]), device, dtype)
            has_f = keys.FORCES in batch
            out = potential(batch, compute_forces=has_f)
            e_pred.append(out[keys.ENERGY].detach().double().cpu().numpy())
            e_ref.append(batch[keys.ENERGY].double().cpu().numpy())
            n_at.append(batch[keys.N_ATOMS].cpu().numpy())
            # sum of atom reference energies, so the plot shows what the network learns
            offset = torch.zeros(len(idx), dtype=torch.float64).index_add(
                0, batch[keys.IDX_M].cpu(), potential.atomref[potential.species_of(batch[keys.Z])].double().cpu()
            )
            e_offset.append(offset.numpy())
            if keys.LAYER_ENERGY in out:
                ls = out[keys.LAYER_ENERGY].detach().double().sum(0).cpu().numpy()
                layer_sum = ls if layer_sum is None else layer_sum + ls
            if has_f:
                fp = out[keys.FORCES].detach().double().cpu().numpy()
                fr = batch[keys.FORCES].double().cpu().numpy()
                d = fp - fr
                f_abs += float(np.abs(d).sum())
                f_sq += float((d**2).sum())
                f_count += d.size
                if sum(len(x) for x in f_pred_keep) < _PLOT_POINTS:
                    f_pred_keep.append(fp.ravel())
                    f_ref_keep.append(fr.ravel())
            bar.advance(task, len(idx))
    ep, er, na = np.concatenate(e_pred), np.concatenate(e_ref), np.concatenate(n_at)
    de = ep - er
    metrics: dict[str, Any] = {
        "n_structures": int(len(ep)),
        "n_atoms": int(na.sum()),
        "energy_mae": float(np.abs(de).mean()),
        "energy_rmse": float(np.sqrt((de**2).mean())),
        "energy_per_atom_mae": float(np.abs(de / na).mean()),
        "energy_per_atom_rmse": float(np.sqrt(((de / na) ** 2).mean())),
        "forces_mae": f_abs / f_count if f_count else None,
        "forces_rmse": float(np.sqrt(f_sq / f_count)) if f_count else None,
        "units": {"energy": "eV", "forces": "eV/Angstrom"},
    }
    for k in ("energy_mae", "energy_rmse", "energy_per_atom_mae", "energy_per_atom_rmse", "forces_mae", "forces_rmse"):
        v = metrics[k]
        metrics[k + "_kcal_mol"] = v * EV_TO_KCAL_MOL if v is not None else None
    if layer_sum is not None:
        metrics["layer_energy_mean"] = (layer_sum / len(ep)).tolist()
    samples = {
        "energy_pred": ep, "energy_ref": er, "n_atoms": na, "energy_offset": np.concatenate(e_offset),
        "forces_pred": np.concatenate(f_pred_keep) if f_pred_keep else None,
        "forces_ref": np.concatenate(f_ref_keep) if f_ref_keep else None,
    }
    return {"metrics": metrics, "samples": samples}


def print_metrics(metrics: Mapping[str, Any], title: str) -> None:
    rows = []
    for label, key, unit in [
        ("energy MAE", "energy_mae", "eV"),
        ("energy RMSE", "energy_rmse", "eV"),
        ("energy MAE / atom", "energy_per_atom_mae", "eV"),
        ("energy RMSE / atom", "energy_per_atom_rmse", "eV"),
        ("forces MAE", "forces_mae", "eV/Å"),
        ("forces RMSE", "forces_rmse", "eV/Å"),
    ]:
        v = metrics.get(key)
        if v is None:
            continue
        kunit = "kcal/mol/Å" if "forces" in key else "kcal/mol"
        rows.append([label, f"{v:.4f} {unit}", f"{v * 1000:.1f} m{unit}", f"{v * EV_TO_KCAL_MOL:.3f} {kunit}"])
    if metrics.get("layer_energy_mean") is not None:
        for k, v in enumerate(metrics["layer_energy_mean"]):
            rows.append([f"mean layer {k} energy", f"{v:.4f} eV", "", ""])
    console.print(table(f"{title} ({metrics['n_structures']} structures, {metrics['n_atoms']} atoms)", ["metric", "eV", "meV", "kcal/mol"], rows))


def _parity_panel(ax, ref: np.ndarray, pred: np.ndarray, quantity: str, name: str, mae_unit: str, size: float) -> None:
    """Scatter of predicted vs reference with the diagonal and the MAE (values in eV units)."""
    ax.scatter(ref, pred, s=size, alpha=0.4)
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"reference {quantity}")
    ax.set_ylabel(f"predicted {quantity}")
    ax.set_title(f"{name}, MAE {np.abs(ref - pred).mean() * 1000:.1f} {mae_unit}")


def parity_plot(samples: Mapping[str, Any], path: str | Path, title: str = "") -> None:
    """Predicted vs reference energy per atom and force components, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    has_f = samples.get("forces_pred") is not None
    fig, axes = plt.subplots(1, 2 if has_f else 1, figsize=(10 if has_f else 5, 4.6), squeeze=False)
    offset = samples.get("energy_offset")
    offset = np.zeros_like(samples["energy_ref"]) if offset is None else offset
    x = (samples["energy_ref"] - offset) / samples["n_atoms"]
    y = (samples["energy_pred"] - offset) / samples["n_atoms"]
    _parity_panel(axes[0, 0], x, y, "energy / atom − atom references (eV)", "energy", "meV/atom", size=4)
    if has_f:
        _parity_panel(axes[0, 1], samples["forces_ref"], samples["forces_pred"], "force component (eV/Å)", "forces", "meV/Å", size=2)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def _indices(cfg: DictConfig, ckpt: Path, dataset: AtomsDataset) -> np.ndarray:
    part = cfg.get("split")
    if part in (None, "", "all"):
        return np.arange(len(dataset))
    if part not in ("train", "val", "test"):
        raise NNPError(f"split={part!r}: choose train, val, test or all")
    split_file = cfg.get("split_file") or ckpt.parent / "split.npz"
    from nnp.data.splits import fingerprint

    split = load_split(split_file, len(dataset), fingerprint=fingerprint(dataset.groups(), dataset.energies()))
    idx = split[part]
    if len(idx) == 0:
        raise NNPError(f"{split_file}: the {part} split is empty")
    return idx


def run(cfg: DictConfig) -> dict[str, Any]:
    ckpt = Path(str(cfg.ckpt)) if cfg.get("ckpt") not in (None, "???") else None
    if ckpt is None:
        raise NNPError("ckpt is not set: give the model, e.g. ckpt=runs/.../model.pt")
    potential = Potential.load(ckpt)
    if cfg.get("dtype"):
        potential = potential.to(getattr(torch, str(cfg.dtype)))
    if cfg.get("data") is not None:
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    else:
        data_cfg = getattr(potential, "metadata", {}).get("data")
        if not data_cfg:
            raise NNPError(f"{ckpt}: model stores no training data config; give data=... data.path=...")
    dataset = open_dataset(data_cfg)
    indices = _indices(cfg, ckpt, dataset)
    potential.species_of(torch.as_tensor(np.array(dataset.elements())))  # unknown elements: one clear error
    result = predict_dataset(potential, dataset, indices, int(cfg.batch_size), str(cfg.device))
    metrics = result["metrics"]
    metrics["model"] = str(ckpt)
    metrics["data"] = str(data_cfg.get("path"))
    metrics["split"] = cfg.get("split") or "all"
    title = f"{Path(metrics['data']).name} [{metrics['split']}]"
    print_metrics(metrics, title)
    out = Path(str(cfg.output))
    write_json(out, metrics)
    written = [str(out)]
    if cfg.get("plot", True):
        png = out.with_suffix(".png")
        parity_plot(result["samples"], png, title)
        written.append(str(png))
    console.print(f"wrote {', '.join(written)}")
    return metrics
