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


def _chunks(indices: np.ndarray, chunk: int):
    for start in range(0, len(indices), chunk):
        yield indices[start : start + chunk]


def fit_atomref(
    dataset: AtomsDataset, indices: np.ndarray, species: list[int], chunk: int = 65536
) -> tuple[np.ndarray, float]:
    """Reference energy per species (S,) eV and the per-atom RMS of the residual (eV).

    Species absent from ``indices`` get 0; when compositions are collinear
    (e.g. one formula only) the minimum-norm solution is returned. Structures
    without a finite energy are left out.
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
