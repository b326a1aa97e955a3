"""Statistics the model needs, computed once on the training split.

Atom reference (self) energies are fitted by least squares, E_m ~ sum_s
c_ms e_s, with c_ms the number of atoms of species s in structure m. The fit
streams over the split in chunks and accumulates the normal equations
(S x S), so memory does not grow with the dataset; the network then learns
the remainder, scaled by its per-atom RMS.
"""

from __future__ import annotations

import numpy as np

from nnp.data.datasets import AtomsDataset
from nnp.errors import NNPError


def _chunks(indices: np.ndarray, chunk: int):
    for start in range(0, len(indices), chunk):
        yield indices[start : start + chunk]


def fit_atomref(
    dataset: AtomsDataset, indices: np.ndarray, species: list[int], chunk: int = 65536
) -> tuple[np.ndarray, float]:
    """Reference energy per species (S,) eV and the per-atom RMS of the residual (eV).

    Every species must occur in a structure of ``indices`` with a finite
    energy: one that does not would get a reference energy of 0 eV (off by
    ~10^3 eV per atom for heavy elements), so NNPError names it instead. When
    compositions are collinear (e.g. one formula only) the minimum-norm
    solution is returned. Structures without a finite energy are left out.
    """
    indices = np.asarray(indices, dtype=np.int64)
    energies = dataset.energies()
    s = len(species)
    ata = np.zeros((s, s))
    atb = np.zeros(s)
    # Fit e_s - shift (exact for any shift, added back below) with shift the
    # first chunk's mean energy per atom: keeps the normal equations well
    # conditioned for total energies of -1e4 eV.
    shift = None
    for idx in _chunks(indices, chunk):
        a = dataset.composition_matrix(idx, species)
        e = energies[idx]
        ok = np.isfinite(e)
        a, e = a[ok], e[ok]
        if shift is None:
            shift = float(e.sum() / max(a.sum(), 1.0))
        e = e - shift * a.sum(axis=1)
        ata += a.T @ a
        atb += a.T @ e
    present = np.flatnonzero(np.diag(ata) > 0)
    if len(present) < s:
        _absent_species_error(dataset, indices, [species[k] for k in range(s) if k not in set(present.tolist())])
    atomref = np.zeros(s)
    if len(present):
        sol, *_ = np.linalg.lstsq(ata[np.ix_(present, present)], atb[present], rcond=None)
        atomref[present] = sol + (shift or 0.0)
    sq, n = 0.0, 0
    for idx in _chunks(indices, chunk):
        a = dataset.composition_matrix(idx, species)
        e = energies[idx]
        ok = np.isfinite(e)
        resid = (e[ok] - a[ok] @ atomref) / np.maximum(a[ok].sum(1), 1)
        sq += float((resid**2).sum())
        n += int(ok.sum())
    rms = float(np.sqrt(sq / max(n, 1)))
    return atomref, rms


def _absent_species_error(dataset: AtomsDataset, indices: np.ndarray, missing: list[int]) -> None:
    """NNPError naming the elements that no training structure (with an energy) contains."""
    from ase.data import chemical_symbols

    n = len(dataset)
    counts = dataset.composition_matrix(np.arange(n), missing).astype(bool).sum(0) if n <= 1_000_000 else None
    names = []
    for k, z in enumerate(missing):
        label = f"{chemical_symbols[z]} (Z={z})" if 0 < z < len(chemical_symbols) else f"Z={z}"
        if counts is not None and counts[k]:
            label += f" in {int(counts[k])} of {n} structures"
        names.append(label)
    where = f"{dataset.path}: " if getattr(dataset, "path", None) else ""
    several = len(missing) > 1
    raise NNPError(
        f"{where}element{'s' if several else ''} {'; '.join(names)} {'are' if several else 'is'} in no structure "
        f"of the training split ({len(indices)} structures), so {'their' if several else 'its'} reference energy "
        "would be 0 eV: use a larger training split (data.split.train), a grouped split (data.split.by=group) "
        "or another data.split.seed, or remove those structures"
    )


def force_rms(dataset: AtomsDataset, indices: np.ndarray, max_structures: int = 2000, seed: int = 0) -> float | None:
    """RMS of the force components (eV/Å) over ``indices`` (a fixed random subset of at most
    ``max_structures``); None when the data has no forces."""
    if not getattr(dataset, "has_forces", False) or len(indices) == 0:
        return None
    indices = np.asarray(indices, dtype=np.int64)
    if len(indices) > max_structures:
        indices = np.sort(np.random.default_rng(seed).choice(indices, size=max_structures, replace=False))
    sq, n = 0.0, 0
    for i in indices:
        f = np.asarray(dataset[int(i)].get("forces", np.zeros((0, 3))), dtype=np.float64)
        ok = np.isfinite(f)
        sq += float((f[ok] ** 2).sum())
        n += int(ok.sum())
    return float(np.sqrt(sq / n)) if n else None


#: How the network's output is scaled to eV (``energy_scale`` in the train config).
ENERGY_SCALES = ("residual_rms", "force_rms")


def choose_energy_scale(kind: str, residual_rms: float, forces_rms: float | None) -> float:
    """The Potential's ``energy_scale`` (eV): the per-atom residual RMS, or the force RMS times 1 Å.

    ``force_rms`` falls back to the residual RMS on energy-only data.
    """
    if kind == "force_rms" and forces_rms:
        return float(forces_rms)
    return float(residual_rms)
