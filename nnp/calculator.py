"""ASE calculator backed by a saved nnp model or committee.

    from nnp import NNPCalculator
    atoms.calc = NNPCalculator("run/model.pt")
    atoms.calc = NNPCalculator(["a.pt", "b.pt", "c.pt"])   # a committee
    atoms.calc = NNPCalculator("committee.pt")

Energies in eV, forces in eV/Å, stress in eV/Å^3 (ASE conventions), as the
model file states its units. A structure's total charge is ``atoms.info['charge']``
(e; missing = neutral); models with the coulomb term give ``atoms.get_charges()``
(e) and ``get_dipole_moment()`` (e Å). A committee gives the members' mean and, in
``results``, ``energy_std`` (eV), ``forces_std`` (n,) eV/Å (per atom, the RMS
deviation of the members' force vectors from the mean) and ``max_forces_std``
(eV/Å), and with coulomb ``charges_std`` (n,) e.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes

from nnp import keys
from nnp.committee import Committee, load_model
from nnp.data.collate import atoms_to_sample, collate
from nnp.inference import batch_to, model_dtype, run_batch  # noqa: F401  (batch_to: re-exported)
from nnp.neighbor_skin import SkinNeighborList
from nnp.potential import Potential


class NNPCalculator(Calculator):
    """ASE calculator: energy, free_energy, forces, energies (per atom), stress (periodic cells),
    and for committees energy_std, forces_std, max_forces_std."""

    implemented_properties = [
        "energy", "free_energy", "forces", "energies", "stress", "energy_std", "forces_std", "max_forces_std",
        "charges", "dipole", "charges_std",
    ]

    def __init__(
        self,
        model: str | os.PathLike | Sequence[str | os.PathLike] | Potential | Committee,
        device: str = "cpu",
        dtype: str | torch.dtype | None = None,
        jit: bool = False,
        skin: float = 0.0,
        **kwargs,
    ):
        """``model``: a model or committee file, a list of model files, or a loaded model.
        ``jit``: run as TorchScript (less per-call overhead: about 20% faster MD
        steps for molecules of tens of atoms; no gain for large cells).
        ``skin`` (Å): > 0 keeps a neighbor list at cutoff + skin between calls and
        rebuilds it only when an atom has moved more than skin / 2 (:mod:`nnp.neighbor_skin`)."""
        super().__init__(**kwargs)
        potential = model if isinstance(model, torch.nn.Module) else load_model(model, map_location=device)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        if dtype is not None:
            potential = potential.to(dtype)
        self.potential = potential.to(device).eval()
        self.device = torch.device(device)
        self.dtype = model_dtype(self.potential)
        self.is_committee = isinstance(self.potential, Committee)
        if jit:
            from nnp.terms import check_scriptable

            check_scriptable(self.potential)
            self.potential = torch.jit.script(self.potential)
        self.neighbors = SkinNeighborList(float(self.potential.cutoff), skin) if skin > 0 else None

    def check_state(self, atoms, tol=1e-15):
        """ASE's changes, plus a changed total charge (``atoms.info['charge']``).

        Compared exactly with ``np.array_equal`` where ASE's own check runs ``np.allclose``
        per property at tol 1e-15 (the same answer, but about 30% of a small molecule's
        MD step went to it)."""
        if self.atoms is None or len(self.atoms) != len(atoms):
            changes = super().check_state(atoms, tol)
        else:
            changes = [name for name, get in _STATE if name not in self.ignored_changes and not _same(get(self.atoms), get(atoms))]
        if self.atoms is not None and self.atoms.info.get("charge") != atoms.info.get("charge") and "initial_charges" not in changes:
            changes.append("initial_charges")
        return changes

    def _batch(self, system_changes) -> dict[str, torch.Tensor]:
        """The collated one-structure batch; when only positions moved (every MD step),
        the previous batch with the new positions instead of a new collate."""
        cached = getattr(self, "_last_batch", None)
        if cached is not None and set(system_changes) <= {"positions"}:
            batch = dict(cached)
            batch[keys.R] = torch.from_numpy(np.array(self.atoms.positions, dtype=np.float64))
        else:
            batch = collate([atoms_to_sample(self.atoms)])
        self._last_batch = batch
        return batch

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        batch = self._batch(system_changes)
        if self.neighbors is not None:
            nbrs = self.neighbors(batch[keys.R].to(self.dtype), batch[keys.CELL][0].to(self.dtype), batch[keys.PBC][0])
            batch[keys.PAIRS], batch[keys.PAIR_IMAGES] = nbrs.pairs, nbrs.images
        # Once asked for stress (NPT, cell relaxation: every step), compute it with the forces in the
        # same pass, instead of a second model call when the integrator asks for it next.
        self._stress_asked = getattr(self, "_stress_asked", False) or "stress" in properties
        want_stress = self._stress_asked and bool(self.atoms.pbc.all())
        out = run_batch(self.potential, batch, self.device, forces=True, stress=want_stress)
        energy = float(out[keys.ENERGY][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out[keys.FORCES].double().numpy(),
            "energies": out[keys.ATOMIC_ENERGY].double().numpy(),
        }
        if keys.CHARGES in out:  # models with the coulomb term: atoms.get_charges(), e
            self.results["charges"] = out[keys.CHARGES].double().numpy()
            self.results["dipole"] = out[keys.DIPOLE][0].double().numpy()
        if keys.CHARGES_STD in out:  # a committee with coulomb: the spread of its members' charges, e
            self.results["charges_std"] = out[keys.CHARGES_STD].double().numpy()
        if keys.ENERGY_STD in out:
            self.results["energy_std"] = float(out[keys.ENERGY_STD][0])
        if keys.FORCES_STD in out:
            self.results["forces_std"] = out[keys.FORCES_STD].double().numpy()
            self.results["max_forces_std"] = float(out[keys.MAX_FORCES_STD][0])
        if want_stress:
            from ase.stress import full_3x3_to_voigt_6_stress

            self.results["stress"] = full_3x3_to_voigt_6_stress(out[keys.STRESS][0].double().numpy())


def _same(a, b) -> bool:
    """Equal arrays; an absent per-atom array (None) equals only another absent one, as in ASE."""
    if a is None or b is None:
        return a is None and b is None
    return np.array_equal(a, b)


#: What ASE's ``check_state`` compares (``ase.calculators.calculator.all_changes``), read without copies.
_STATE = (
    ("positions", lambda atoms: atoms.arrays["positions"]),
    ("numbers", lambda atoms: atoms.arrays["numbers"]),
    ("cell", lambda atoms: atoms.cell.array),
    ("pbc", lambda atoms: atoms.pbc),
    ("initial_charges", lambda atoms: atoms.arrays.get("initial_charges")),
    ("initial_magmoms", lambda atoms: atoms.arrays.get("initial_magmoms")),
)
