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
from nnp.committee import Committee, load_model, model_paths
from nnp.data import open_dataset
from nnp.data.datasets import AtomsDataset
from nnp.data.splits import load_split
from nnp.errors import NNPError
from nnp.inference import dataset_fetch, run_batches
from nnp.outputs import check_writable, save_figure
from nnp.report import console, table, write_json
from nnp.units import EV_A3_TO_GPA, EV_TO_KCAL_MOL

# Points kept for the parity plot (statistics use every point).
_PLOT_POINTS = 100_000


def predict_dataset(
    potential,
    dataset: AtomsDataset,
    indices: np.ndarray,
    batch_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Run a model or committee over ``dataset[indices]``: metrics (eV, eV/Å) and plot samples.

    With a committee, ``samples`` also holds the predicted spreads beside the
    errors (``energy_std``/``energy_error`` per structure, ``forces_std``/
    ``forces_error`` per atom, the error being the norm of the force error vector)
    for :func:`uncertainty_report`.
    """
    atomref = potential.atomref64.detach().cpu()
    e_pred, e_ref, n_at, e_offset = [], [], [], []
    f_abs = f_sq = 0.0
    f_count = 0
    f_pred_keep, f_ref_keep = [], []
    e_std, f_std, f_err = [], [], []
    layer_sum = None
    term_sum: dict[str, float] = {}
    s_abs = s_sq = 0.0
    s_count = 0
    fetch = dataset_fetch(dataset, indices)
    # terms the labels do not contain (d3 in_labels=false) are left out of the comparison
    fitting = getattr(potential, "fitting", None)
    if fitting is not None:
        potential.fitting = True
    for batch, out in run_batches(potential, fetch, len(indices), batch_size, device, forces=None, progress="evaluating" if progress else None):
        e_pred.append(out[keys.ENERGY].double().numpy())
        e_ref.append(batch[keys.ENERGY].double().numpy())
        n_at.append(batch[keys.N_ATOMS].numpy())
        # sum of atom reference energies, so the plot shows what the network learns
        offset = torch.zeros(len(n_at[-1]), dtype=torch.float64).index_add(
            0, batch[keys.IDX_M], atomref[potential.species_of(batch[keys.Z]).cpu()]
        )
        e_offset.append(offset.numpy())
        if keys.ENERGY_STD in out:
            e_std.append(out[keys.ENERGY_STD].double().numpy())
        if keys.LAYER_ENERGY in out:
            ls = out[keys.LAYER_ENERGY].double().sum(0).numpy()
            layer_sum = ls if layer_sum is None else layer_sum + ls
        for key in out:
            if key.startswith(keys.TERM_ENERGY):  # each energy term's share (nnp.terms)
                name = key[len(keys.TERM_ENERGY):]
                term_sum[name] = term_sum.get(name, 0.0) + float(out[key].double().sum())
        if keys.STRESS in batch and keys.STRESS in out:  # periodic structures with a stress label
            ds = (out[keys.STRESS].double() - batch[keys.STRESS].double()).numpy()
            ds = ds[np.isfinite(ds).all(axis=(1, 2))]
            s_abs += float(np.abs(ds).sum())
            s_sq += float((ds**2).sum())
            s_count += ds.size
        if keys.FORCES in batch and keys.FORCES in out:
            fp = out[keys.FORCES].double().numpy()
            fr = batch[keys.FORCES].double().numpy()
            d = fp - fr
            f_abs += float(np.abs(d).sum())
            f_sq += float((d**2).sum())
            f_count += d.size
            if keys.FORCES_STD in out:
                f_std.append(out[keys.FORCES_STD].double().numpy())
                f_err.append(d)
            if sum(len(x) for x in f_pred_keep) < _PLOT_POINTS:
                f_pred_keep.append(fp.ravel())
                f_ref_keep.append(fr.ravel())
    if fitting is not None:
        potential.fitting = fitting
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
    if s_count:  # stress components of the periodic structures with labels
        metrics["stress_mae"] = s_abs / s_count
        metrics["stress_rmse"] = float(np.sqrt(s_sq / s_count))
        metrics["stress_mae_GPa"] = metrics["stress_mae"] * EV_A3_TO_GPA
        metrics["stress_rmse_GPa"] = metrics["stress_rmse"] * EV_A3_TO_GPA
        metrics["units"]["stress"] = "eV/Angstrom^3"
    for k in ("energy_mae", "energy_rmse", "energy_per_atom_mae", "energy_per_atom_rmse", "forces_mae", "forces_rmse"):
        v = metrics[k]
        metrics[k + "_kcal_mol"] = v * EV_TO_KCAL_MOL if v is not None else None
    if layer_sum is not None:
        metrics["layer_energy_mean"] = (layer_sum / len(ep)).tolist()
    if term_sum:
        # mean energy per structure of each term (eV), and its share of the mean |energy - atom references|
        learned = float(np.abs(ep - np.concatenate(e_offset)).mean())
        metrics["term_energy_mean"] = {k: v / len(ep) for k, v in term_sum.items()}
        metrics["term_energy_share"] = {k: abs(v / len(ep)) / learned if learned > 0 else None for k, v in term_sum.items()}
    samples = {
        "energy_pred": ep, "energy_ref": er, "n_atoms": na, "energy_offset": np.concatenate(e_offset),
        "forces_pred": np.concatenate(f_pred_keep) if f_pred_keep else None,
        "forces_ref": np.concatenate(f_ref_keep) if f_ref_keep else None,
    }
    if e_std:
        samples.update(energy_std=np.concatenate(e_std), energy_error=de)
    if f_std:
        samples.update(forces_std=np.concatenate(f_std), forces_error=np.concatenate(f_err))
    return {"metrics": metrics, "samples": samples}


def uncertainty_report(samples: Mapping[str, Any], scale: Mapping[str, float] | None = None) -> dict[str, Any]:
    """Calibration metrics of a committee's spreads against the actual errors.

    Energy: per structure, ``energy_std`` against the energy error. Forces: per
    atom, Spearman correlation of ``forces_std`` with the norm of the force
    error; the Gaussian metrics (NLL, miscalibration area, fitted scale) treat
    each Cartesian component's error as N(0, forces_std^2 / 3), because
    forces_std is the RMS length of a 3-vector deviation. ``scale``: factors
    already applied to the stds (reported; the fit is relative to them).
    """
    from nnp.calibration import calibration_metrics, spearman

    report: dict[str, Any] = {}
    if samples.get("energy_std") is not None:
        report["energy"] = calibration_metrics(samples["energy_std"], samples["energy_error"])
    if samples.get("forces_std") is not None:
        std, err = samples["forces_std"], samples["forces_error"]
        forces = calibration_metrics(np.repeat(std / np.sqrt(3.0), 3), err.ravel())
        forces["spearman"] = spearman(std, np.linalg.norm(err, axis=1))
        forces["n"] = int(len(std))
        report["forces"] = forces
    if scale is not None:
        report["applied_scale"] = dict(scale)
    return report


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
    for label, key in (("stress MAE", "stress_mae"), ("stress RMSE", "stress_rmse")):
        if metrics.get(key) is not None:
            v = metrics[key]
            rows.append([label, f"{v:.5f} eV/Å³", f"{v * 1000:.2f} meV/Å³", f"{v * EV_A3_TO_GPA:.3f} GPa"])
    if metrics.get("layer_energy_mean") is not None:
        for k, v in enumerate(metrics["layer_energy_mean"]):
            rows.append([f"mean layer {k} energy", f"{v:.4f} eV", "", ""])
    for name, v in (metrics.get("term_energy_mean") or {}).items():
        share = (metrics.get("term_energy_share") or {}).get(name)
        rows.append([f"{name} energy" + (f" ({100 * share:.1f}%)" if share is not None else ""),
                     f"{v:.4f} eV", f"{v * 1000:.1f} meV", f"{v * EV_TO_KCAL_MOL:.3f} kcal/mol"])
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
    save_figure(fig, path, dpi=120, title=title)


def _indices(cfg: DictConfig, ckpt: Path, dataset: AtomsDataset, metadata: Mapping[str, Any]) -> np.ndarray:
    part = cfg.get("split")
    if part in (None, "", "all"):
        return np.arange(len(dataset))
    if part not in ("train", "val", "test"):
        raise NNPError(f"split={part!r}: choose train, val, test or all")
    split_file = cfg.get("split_file") or ckpt.parent / "split.npz"
    if not cfg.get("split_file") and not Path(split_file).is_file() and metadata.get("split_file"):
        split_file = metadata["split_file"]  # a model moved away from its run directory, or a committee
    from nnp.data.splits import fingerprint

    split = load_split(split_file, len(dataset), fingerprint=fingerprint(dataset.groups(), dataset.energies()))
    idx = split[part]
    if len(idx) == 0:
        raise NNPError(f"{split_file}: the {part} split is empty")
    return idx


def model_metadata(model) -> dict[str, Any]:
    """A model's metadata; a committee's own, completed from its first member (data, split)."""
    meta = dict(getattr(model, "metadata", {}) or {})
    if isinstance(model, Committee):
        for key, value in (getattr(model.members[0], "metadata", {}) or {}).items():
            meta.setdefault(key, value)
    return meta


def calibrate(cfg: DictConfig, spec: Any, data_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """Fit the committee's std scale factors on held-out data and store them in its file."""
    paths = model_paths(spec)
    if paths is not None and len(paths) > 1:
        raise NNPError(
            "calibrate=true stores the factors in a committee file: combine the members first"
            " (nnp ensemble combine A.pt B.pt ... output=committee.pt) and give ckpt=committee.pt"
        )
    path = Path(paths[0] if paths else str(spec))
    model = load_model(path)
    if not isinstance(model, Committee):
        raise NNPError(f"{path}: calibrate=true needs a committee (several members), this is a single model")
    if cfg.get("calibrate_data"):
        source = str(cfg.calibrate_data)
        dataset = open_dataset({**dict(data_cfg), "path": source})
        indices = np.arange(len(dataset))
    else:
        digests = {(getattr(m, "metadata", {}) or {}).get("split_digest") for m in model.members}
        if None in digests or len(digests) > 1:
            raise NNPError(
                f"{path}: the members were trained on different (or unrecorded) splits, so no data is held out"
                " from all of them: give calibrate_data=FILE with structures none of them trained on"
            )
        split_file = model_metadata(model).get("split_file")
        if not split_file or not Path(split_file).is_file():
            raise NNPError(f"{path}: the members' split file {split_file} is not there: give calibrate_data=FILE")
        dataset = open_dataset(model_metadata(model).get("data") or dict(data_cfg))
        from nnp.data.splits import fingerprint

        indices = load_split(split_file, len(dataset), fingerprint=fingerprint(dataset.groups(), dataset.energies()))["val"]
        source = f"{split_file} [val]"
        if len(indices) == 0:
            raise NNPError(f"{split_file}: the validation split is empty: give calibrate_data=FILE")
    model.set_calibration(1.0, 1.0, None)  # fit against the raw spreads
    samples = predict_dataset(model, dataset, indices, int(cfg.batch_size), str(cfg.device))["samples"]
    report = uncertainty_report(samples)
    factors = {}
    for quantity in ("energy", "forces"):
        value = report.get(quantity, {}).get("fit_scale")
        factors[quantity] = float(value) if value is not None and np.isfinite(value) and value > 0 else 1.0
    model.set_calibration(factors["energy"], factors["forces"], source)
    model.save(path)
    console.print(
        f"calibrated on {source} ({len(indices)} structures): std scale energy {factors['energy']:.3f},"
        f" forces {factors['forces']:.3f}; stored in {path}"
    )
    return dict(model.calibration)


def print_uncertainty(report: Mapping[str, Any]) -> None:
    rows = []
    for quantity, unit in (("energy", "eV"), ("forces", "eV/Å")):
        r = report.get(quantity)
        if r:
            rows.append([quantity, r["spearman"], r["miscalibration_area"], r["nll"], f"{r['mean_std']:.4f} {unit}", r["fit_scale"]])
    console.print(table("committee uncertainty vs actual error", ["", "Spearman", "miscal. area", "NLL", "mean std", "fitted scale"], rows))


def _calibration_png(out: Path) -> Path:
    """A committee's calibration plot, beside the JSON report."""
    return out.with_name(out.stem + "_calibration.png")


def run(cfg: DictConfig) -> dict[str, Any]:
    spec = cfg.get("ckpt")
    if spec in (None, "", "???"):
        raise NNPError("ckpt is not set: give the model, e.g. ckpt=runs/.../model.pt or ckpt=[a.pt,b.pt]")
    paths = model_paths(spec)
    ckpt = Path(paths[0] if paths else str(spec))
    out = Path(str(cfg.output))
    overwrite = bool(cfg.get("overwrite", False))
    plot = bool(cfg.get("plot", True))
    if out.suffix.lower() == ".png" and plot:
        raise NNPError(f"output={out}: the JSON report and its parity plot (.png) would share this name; give output=NAME.json")
    # every output checked before any work (the committee plot once the model says it is one)
    check_writable(out, overwrite)
    if plot:
        check_writable(out.with_suffix(".png"), overwrite)
    potential = load_model(spec)
    if isinstance(potential, Committee) and plot:
        check_writable(_calibration_png(out), overwrite)
    if cfg.get("calibrate"):
        check_writable(paths[0] if paths else str(spec), overwrite=True, what="ckpt")  # calibrate rewrites it
    if cfg.get("data") is not None:
        data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    else:
        data_cfg = model_metadata(potential).get("data")
        if not data_cfg:
            raise NNPError(f"{ckpt}: model stores no training data config; give data=... data.path=...")
    if cfg.get("calibrate"):
        calibrate(cfg, spec, data_cfg)
        potential = load_model(spec)
    if cfg.get("dtype"):
        potential = potential.to(getattr(torch, str(cfg.dtype)))
    dataset = open_dataset(data_cfg)
    indices = _indices(cfg, ckpt, dataset, model_metadata(potential))
    potential.species_of(torch.as_tensor(np.array(dataset.elements())))  # unknown elements: one clear error
    result = predict_dataset(potential, dataset, indices, int(cfg.batch_size), str(cfg.device))
    metrics = result["metrics"]
    metrics["model"] = [str(p) for p in paths] if paths and len(paths) > 1 else str(ckpt)
    metrics["data"] = str(data_cfg.get("path"))
    metrics["split"] = cfg.get("split") or "all"
    title = f"{Path(metrics['data']).name} [{metrics['split']}]"
    print_metrics(metrics, title)
    written = [str(out)]
    if isinstance(potential, Committee):
        metrics["n_members"] = potential.n_members
        metrics["uncertainty"] = uncertainty_report(result["samples"])
        metrics["calibration"] = dict(potential.calibration)
        print_uncertainty(metrics["uncertainty"])
        if not potential.calibration["applied"]:
            console.print("[dim]std not calibrated: nnp evaluate ... calibrate=true fits and stores a scale factor[/]")
        if cfg.get("plot", True):
            from nnp.calibration import calibration_plot

            panels = {}
            if result["samples"].get("energy_std") is not None:
                panels["energy"] = (result["samples"]["energy_std"], result["samples"]["energy_error"], "eV")
            if result["samples"].get("forces_std") is not None:
                s = result["samples"]
                panels["forces (per component)"] = (np.repeat(s["forces_std"] / np.sqrt(3.0), 3), s["forces_error"].ravel(), "eV/Å")
            cal_png = _calibration_png(out)
            calibration_plot(panels, cal_png, f"{title}: {potential.n_members}-member committee")
            written.append(str(cal_png))
    write_json(out, metrics)
    if cfg.get("plot", True):
        png = out.with_suffix(".png")
        parity_plot(result["samples"], png, title)
        written.append(str(png))
    console.print(f"wrote {', '.join(written)}")
    return metrics
