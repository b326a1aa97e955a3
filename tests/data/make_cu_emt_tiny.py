"""tests/data/cu-emt-tiny.extxyz: 16 strained, rattled 4-atom copper cells labelled with ASE's EMT."""
import ase.io
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

rng = np.random.default_rng(0)
frames = []
for k in range(16):
    a = bulk("Cu", "fcc", a=3.61, cubic=True)
    strain = np.eye(3) + rng.uniform(-0.04, 0.04, (3, 3)) * (0.5 if k % 2 else 1.0)
    a.set_cell(a.cell.array @ ((strain + strain.T) / 2), scale_atoms=True)
    a.rattle(0.05, seed=k)
    a.calc = EMT()
    e, f, s = a.get_potential_energy(), a.get_forces(), a.get_stress()
    a.calc = SinglePointCalculator(a, energy=e, forces=f, stress=s)
    frames.append(a)
ase.io.write("tests/data/cu-emt-tiny.extxyz", frames, format="extxyz")
