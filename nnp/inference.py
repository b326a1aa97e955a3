"""One way to run a model (a potential or a committee) on structures.

The calculator, ``nnp predict`` and ``nnp evaluate`` all go through here:
move a collated flat batch to the model's device and dtype, call the model,
and hand back detached CPU tensors, so that a committee (mean + spread) plugs
in once and every consumer gets it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch

from nnp import keys
from nnp.data.collate import collate
from nnp.terms.checks import note_missing_charge

#: Outputs copied back per call (the rest, e.g. member energies, stay with the model call).
_OUTPUTS = (
    keys.ENERGY, keys.FORCES, keys.ATOMIC_ENERGY, keys.STRESS, keys.LAYER_ENERGY,
    keys.ENERGY_STD, keys.FORCES_STD, keys.MAX_FORCES_STD, keys.CHARGES, keys.DIPOLE, keys.CHARGES_STD,
)


#: Labels that stay float64 whatever the model's dtype: energies are sums of ~10^3 eV per atom,
#: so a float32 label (or residual) would floor errors at ~0.5 meV per molecule.
FLOAT64_LABELS = (keys.ENERGY,)


def batch_to(batch: dict[str, torch.Tensor], device: torch.device | str, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Move a batch to ``device``; floating tensors to ``dtype`` (energy labels: float64)."""
    return {
        k: (v.to(device=device, dtype=torch.float64 if k in FLOAT64_LABELS else dtype) if v.is_floating_point() else v.to(device))
        for k, v in batch.items()
    }


def model_dtype(model: torch.nn.Module) -> torch.dtype:
    """The dtype a potential or committee computes in (that of its reference energies)."""
    return model.atomref.dtype


def run_batch(
    model: torch.nn.Module,
    batch: dict[str, torch.Tensor],
    device: torch.device | str = "cpu",
    forces: bool = True,
    stress: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Evaluate one collated batch; returns detached CPU tensors in the model's dtype.

    ``stress``: None computes it when any structure of the batch is periodic in
    all three directions; stress is per structure, NaN where a structure is not
    periodic (so a periodic frame's stress never depends on its neighbours in a file).
    """
    batch = batch_to(batch, device, model_dtype(model))
    if stress is None:
        stress = bool(batch[keys.PBC].all(-1).any())
    out = model(batch, compute_forces=forces, compute_stress=stress)
    note_missing_charge(model, batch)
    result = {k: out[k].detach().cpu() for k in out if k in _OUTPUTS or k.startswith(keys.TERM_ENERGY)}
    if keys.STRESS in result:
        periodic = batch[keys.PBC].all(-1).cpu()
        result[keys.STRESS] = torch.where(periodic[:, None, None], result[keys.STRESS], torch.full_like(result[keys.STRESS], float("nan")))
    return result


def run_batches(
    model: torch.nn.Module,
    fetch: Callable[[Sequence[int]], list[dict]],
    n: int,
    batch_size: int = 64,
    device: str = "cpu",
    forces: bool | None = True,
    progress: str | None = None,
) -> Iterator[tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]]:
    """Yield ``(batch, outputs)`` for items ``0..n-1`` in batches (a rich progress bar with label ``progress``).

    ``fetch(indices)`` returns the samples (see :mod:`nnp.data.collate`) of those
    items: a dataset's batched read, or structures converted on the fly; or the
    collated batch itself (a slice of a :class:`nnp.data.structure_block.StructureBlock`).
    ``forces=None`` computes forces when the batch has force labels.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    from nnp.report import console

    model = model.to(device).eval()
    with Progress(
        TextColumn(f"[bold]{progress or ''}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=console, disable=progress is None or n < 2 * batch_size, transient=True,
    ) as bar:
        task = bar.add_task("run", total=n)
        for start in range(0, n, batch_size):
            idx = list(range(start, min(start + batch_size, n)))
            batch = fetch(idx)
            batch = batch if isinstance(batch, dict) else collate(batch)
            want_forces = (keys.FORCES in batch) if forces is None else forces
            yield batch, run_batch(model, batch, device, forces=want_forces)
            bar.advance(task, len(idx))


def dataset_fetch(dataset, indices: np.ndarray) -> Callable[[Sequence[int]], list[dict]]:
    """``fetch`` over ``dataset[indices]`` using the dataset's batched read where it has one."""
    many = getattr(dataset, "__getitems__", None)

    def fetch(positions: Sequence[int]) -> list[dict]:
        rows = [int(indices[p]) for p in positions]
        return many(rows) if many is not None else [dataset[r] for r in rows]

    return fetch


#: Outputs per atom (N, ...) -> result name; everything else is per structure (M, ...).
_PER_ATOM = {keys.FORCES: "forces", keys.ATOMIC_ENERGY: "energies", keys.FORCES_STD: "forces_std", keys.CHARGES: "charges",
             keys.CHARGES_STD: "charges_std"}
_PER_STRUCTURE = {keys.ENERGY: "energy", keys.STRESS: "stress", keys.ENERGY_STD: "energy_std",
                  keys.MAX_FORCES_STD: "max_forces_std", keys.DIPOLE: "dipole"}


def run_block(model: torch.nn.Module, block, batch_size: int = 64, device: str = "cpu", progress: str | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Energies and forces of every structure of a :class:`~nnp.data.structure_block.StructureBlock`.

    Returns ``(per_structure, per_atom)``: flat float64 arrays. Per structure: energy (M,) eV,
    stress (M, 3, 3) eV/Å^3 (NaN where not periodic); with a committee energy_std (eV) and
    max_forces_std (eV/Å); with terms (:mod:`nnp.terms`) energy_<term> (eV, each term's share);
    with coulomb dipole (M, 3) e Å. Per atom: forces (N, 3) eV/Å, energies (N,) eV; with a
    committee forces_std (N,) eV/Å; with coulomb charges (N,) e. Batches are slices of the
    block and outputs are concatenated once at the end: no per-structure Python in the loop.
    """
    outs: list[dict[str, torch.Tensor]] = []
    for _, out in run_batches(model, lambda idx: block.batch(idx[0], idx[-1] + 1), len(block), batch_size, device, forces=True, progress=progress):
        outs.append(out)
    names = {**_PER_STRUCTURE, **_PER_ATOM}
    for key in outs[0]:
        if key.startswith(keys.TERM_ENERGY):  # "energy_zbl": one term's share (eV)
            names[key] = "energy_" + key[len(keys.TERM_ENERGY):]
    if any(keys.STRESS in o for o in outs) and not all(keys.STRESS in o for o in outs):  # only batches with a periodic structure
        for o in outs:
            o.setdefault(keys.STRESS, torch.full((len(o[keys.ENERGY]), 3, 3), float("nan")))
    flat = {names[k]: torch.cat([o[k] for o in outs]).double().numpy() for k in outs[0] if k in names}
    per_atom = {k: v for k, v in flat.items() if k in _PER_ATOM.values()}
    return {k: v for k, v in flat.items() if k not in per_atom}, per_atom
