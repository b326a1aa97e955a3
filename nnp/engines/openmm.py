"""nnp models in OpenMM through OpenMM-Torch: the export module and ``nnp md md.engine=openmm``.

:class:`OpenMMModule` wraps a potential (or committee: its mean energy) for
``openmmtorch.TorchForce``: ``forward(positions (N, 3) nm[, boxvectors (3, 3) nm])
-> energy () kJ/mol``; OpenMM-Torch takes the forces by autograd. The system's
atomic numbers are part of the module (OpenMM passes positions only).
``nnp export ckpt=... input=system.xyz format=openmm`` writes it as TorchScript
(runs without nnp, and in another torch: OpenMM-Torch is built for torch 2.9);
periodic when the input structure is.

:class:`OpenMMDynamics` builds an OpenMM ``System`` with that force and runs the
``md.*`` keys through OpenMM's integrators: nve ``VerletIntegrator``, nvt
langevin ``LangevinMiddleIntegrator`` (friction ``md.friction_per_ps``),
nose_hoover ``NoseHooverIntegrator`` (collision frequency ``md.friction_per_ps``);
npt adds a ``MonteCarloBarostat`` (every 25 steps). OpenMM has no Berendsen
thermostat and no MTK or Berendsen barostat: those are refused with one line.
After every step the ASE atoms ``nnp md`` watches get OpenMM's positions,
velocities, box, energy and forces (a committee is evaluated again by nnp for
its spread: twice the cost per step).
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from nnp import keys
from nnp.engines.base import EngineDynamics, Ensemble, hand_results
from nnp.errors import NNPError

INSTALL = ("OpenMM is not installed here: pip install 'nnp[openmm]' in an environment with the torch that "
           "OpenMM-Torch is built for (README, OpenMM: torch==2.9.1 openmm==8.6.1 openmmtorch==1.5)")

#: kJ/mol per eV (CODATA 2018, as OpenMM)
EV_TO_KJ_MOL = 96.48533212331002
NM_TO_A = 10.0


class OpenMMModule(nn.Module):
    """Energy in kJ/mol of positions in nm (and, periodic, box vectors in nm) for OpenMM-Torch."""

    def __init__(self, potential: nn.Module, atomic_numbers, periodic: bool):
        super().__init__()
        self.potential = potential
        self.register_buffer("atomic_numbers", torch.as_tensor(np.asarray(atomic_numbers), dtype=torch.long))
        self.periodic = bool(periodic)
        self.register_buffer("dtype_of", torch.zeros(0, dtype=potential.atomref.dtype))  # the model's dtype
        self.nm_to_a = NM_TO_A  # attributes: TorchScript does not read module-level floats
        self.ev_to_kj_mol = EV_TO_KJ_MOL

    def forward(self, positions: torch.Tensor, boxvectors: Optional[torch.Tensor] = None) -> torch.Tensor:  # noqa: UP045 (TorchScript)
        dtype = self.dtype_of.dtype
        r = positions.to(dtype) * self.nm_to_a
        n = r.shape[0]
        if boxvectors is not None and self.periodic:
            cell = (boxvectors.to(dtype) * self.nm_to_a).reshape(1, 3, 3)
            pbc = torch.ones((1, 3), dtype=torch.bool, device=r.device)
        else:
            cell = torch.zeros((1, 3, 3), dtype=dtype, device=r.device)
            pbc = torch.zeros((1, 3), dtype=torch.bool, device=r.device)
        batch: Dict[str, torch.Tensor] = {
            keys.Z: self.atomic_numbers,
            keys.R: r,
            keys.IDX_M: torch.zeros(n, dtype=torch.long, device=r.device),
            keys.N_ATOMS: torch.tensor([n], dtype=torch.long, device=r.device),
            keys.CELL: cell,
            keys.PBC: pbc,
        }
        # OpenMM-Torch differentiates the energy itself: no forces here
        out = self.potential(batch, compute_forces=False)
        return (out[keys.ENERGY].sum() * self.ev_to_kj_mol).to(positions.dtype)


def openmm_module(potential: nn.Module, atoms) -> torch.jit.ScriptModule:
    """The TorchScript module of ``potential`` for the elements of ``atoms`` (NNPError if it does not compile)."""
    periodic = bool(atoms.pbc.all())
    if atoms.pbc.any() and not periodic:
        raise NNPError("OpenMM: the structure is periodic in some directions only; OpenMM boxes are fully periodic or absent")
    potential.species_of(torch.as_tensor(atoms.numbers))  # unknown elements: one line, before compiling
    try:
        return torch.jit.script(OpenMMModule(potential.eval(), atoms.numbers, periodic))
    except Exception as err:  # the TorchScript compiler raises many types
        detail = " ".join(str(err).split())[:300]
        raise NNPError(f"cannot compile this model for OpenMM: {detail}") from None


def reduced_box(cell: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ASE cell -> (OpenMM box vectors in Å: a along x, b in the xy plane; the rotation R, v_openmm = v_ase @ R)."""
    from ase.calculators.lammps import Prism  # the same lower-triangular frame as LAMMPS

    prism = Prism(cell, reduce_cell=False)
    rot = prism.rot_mat
    return cell @ rot, rot


def _require_openmm():
    try:
        import openmm
        import openmmtorch
    except ImportError:
        raise NNPError(INSTALL) from None
    return openmm, openmmtorch


class OpenMMDynamics(EngineDynamics):
    """``nnp md md.engine=openmm``: OpenMM integrates, with the model as a ``TorchForce``."""

    engine = "openmm"

    def __init__(self, atoms, md):
        from ase import units

        openmm, openmmtorch = _require_openmm()
        from openmm import unit as u

        super().__init__(atoms)
        ens = Ensemble.from_config(md)
        calc = atoms.calc
        self.calc = calc
        self.committee = bool(getattr(calc, "is_committee", False))
        self.periodic = bool(atoms.pbc.all())
        self.dt_ase = ens.timestep_fs * units.fs
        if self.periodic:
            box, self.rot = reduced_box(atoms.cell.array)
        else:
            box, self.rot = None, np.eye(3)
        system = openmm.System()
        for m in atoms.get_masses():
            system.addParticle(float(m))
        force = openmmtorch.TorchForce(openmm_module(calc.potential, atoms))
        force.setUsesPeriodicBoundaryConditions(self.periodic)
        system.addForce(force)
        if self.periodic:
            system.setDefaultPeriodicBoxVectors(*[openmm.Vec3(*(v / NM_TO_A)) for v in box])
        integrator = self._integrator(openmm, ens, system)
        platform = openmm.Platform.getPlatformByName("CUDA" if str(calc.device).startswith("cuda") else "CPU")
        try:
            self.context = openmm.Context(system, integrator, platform)
        except Exception as err:  # OpenMMException
            raise NNPError(f"OpenMM: {' '.join(str(err).split())[:300]}") from None
        self.integrator = integrator
        self.u = u
        # Verlet and LangevinMiddle are leapfrog: OpenMM's velocities are half a step behind the
        # positions. nnp's (ASE's) are on the step: shift by dt/2 F/m in (a = F/m in nm/ps^2 with
        # kJ/mol/nm and amu), so the run starts where md.engine=ase starts and E_kin is on the step.
        self.half_kick = 0.0
        if isinstance(integrator, (openmm.VerletIntegrator, openmm.LangevinMiddleIntegrator)):
            self.half_kick = 0.5 * ens.timestep_fs / 1000.0
        self.inv_mass = 1.0 / atoms.get_masses()[:, None]
        f0 = atoms.get_forces() @ self.rot * (EV_TO_KJ_MOL * NM_TO_A)
        v0 = (atoms.get_velocities() * (1000.0 * units.fs) @ self.rot) / NM_TO_A
        self.context.setPositions((atoms.positions @ self.rot) / NM_TO_A * u.nanometer)
        self.context.setVelocities((v0 - self.half_kick * f0 * self.inv_mass) * u.nanometer / u.picosecond)

    @staticmethod
    def _integrator(openmm, ens: Ensemble, system):
        dt = ens.timestep_fs / 1000.0  # ps
        t, gamma = ens.temperature_K, ens.friction_per_ps
        if ens.ensemble == "nve":
            return openmm.VerletIntegrator(dt)
        if ens.ensemble not in ("nvt", "npt"):
            raise NNPError(f"md.ensemble={ens.ensemble}: choose nve, nvt or npt with md.engine=openmm")
        if ens.ensemble == "npt":
            if ens.barostat != "montecarlo":
                raise ens.refuse("openmm", f"md.barostat={ens.barostat}",
                                 "OpenMM's NPT is Monte Carlo: md.barostat=montecarlo")
            system.addForce(openmm.MonteCarloBarostat(ens.pressure_bar, t, 25))
        if ens.thermostat == "langevin":
            return openmm.LangevinMiddleIntegrator(t, gamma, dt)
        if ens.thermostat == "nose_hoover":
            return openmm.NoseHooverIntegrator(t, gamma, dt)
        raise ens.refuse("openmm", f"md.thermostat={ens.thermostat}", "use langevin or nose_hoover")

    def step(self) -> None:
        self.integrator.step(1)
        self.sync()

    def sync(self) -> None:
        """``atoms`` := OpenMM's state (ASE frame, eV, Å), with its energy and forces as the calculator's results."""
        from ase import units

        u, atoms = self.u, self.atoms
        state = self.context.getState(getPositions=True, getVelocities=True, getEnergy=True, getForces=True)
        back = self.rot.T
        atoms.positions = np.asarray(state.getPositions(asNumpy=True).value_in_unit(u.nanometer)) * NM_TO_A @ back
        forces = np.asarray(state.getForces(asNumpy=True).value_in_unit(u.kilojoule_per_mole / u.nanometer))
        v = np.asarray(state.getVelocities(asNumpy=True).value_in_unit(u.nanometer / u.picosecond))
        v = (v + self.half_kick * forces * self.inv_mass) * NM_TO_A  # on the step (see __init__), Å/ps
        atoms.set_velocities(v @ back / (1000.0 * units.fs))
        if self.periodic:
            box = np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(u.nanometer)) * NM_TO_A
            atoms.set_cell(box @ back, scale_atoms=False)
        if self.committee:  # the spread needs every member: nnp evaluates them (OpenMM's energy is their mean)
            atoms.get_forces()
            return
        energy = state.getPotentialEnergy().value_in_unit(u.kilojoule_per_mole) / EV_TO_KJ_MOL
        hand_results(atoms, {"energy": energy, "free_energy": energy, "forces": forces / EV_TO_KJ_MOL / NM_TO_A @ back})


OPENMM_FORMAT = "nnp.openmm-torch"


def export_openmm(potential: nn.Module, atoms, path) -> None:
    """Write the OpenMM-Torch module of ``potential`` for ``atoms``' elements (TorchScript, atomically)."""
    import io
    import json

    from nnp.outputs import write_bytes

    module = openmm_module(potential, atoms)
    info = {
        "format": OPENMM_FORMAT,
        "atomic_numbers": [int(z) for z in atoms.numbers],
        "periodic": bool(atoms.pbc.all()),
        "units": {"positions": "nm", "boxvectors": "nm", "energy": "kJ/mol"},
        "usage": "openmmtorch.TorchForce(path); force.setUsesPeriodicBoundaryConditions(periodic)",
    }
    buffer = io.BytesIO()
    torch.jit.save(module, buffer, _extra_files={"nnp_metadata.json": json.dumps(info)})
    write_bytes(path, buffer.getbuffer())


def module_energy_forces(module, atoms) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces (eV/Å) of ``atoms`` through an OpenMM module, in plain torch (a check)."""
    dtype = torch.float64
    r = torch.tensor(atoms.positions / NM_TO_A, dtype=dtype, requires_grad=True)
    box = torch.tensor(atoms.cell.array / NM_TO_A, dtype=dtype) if atoms.pbc.all() else None
    energy = module(r, box)
    (grad,) = torch.autograd.grad(energy, [r])
    return float(energy) / EV_TO_KJ_MOL, -grad.numpy() / EV_TO_KJ_MOL / NM_TO_A


def load_openmm_module(path) -> torch.jit.ScriptModule:
    try:
        return torch.jit.load(str(path))
    except Exception as err:  # torch raises several types for a bad file
        raise NNPError(f"{path}: not a TorchScript file ({type(err).__name__})") from None
