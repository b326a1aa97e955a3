"""Labeling structures with a reference method (an ASE calculator): energies and forces to train on.

The labelers are named in :data:`nnp.registry.LABELERS` (``labeler.name``):
``xtb`` (GFN2-xTB or GFN1-xTB through tblite, the default) and ``ase`` (any ASE
calculator class by import path). :func:`label_structures` runs one of them
over a list of structures in ``labeler.workers`` processes, records every
result in an append-only journal as it arrives (so that a killed run never
labels a structure twice) and records a failed label with its reason instead
of stopping.
"""

from nnp.labeling.run import Label, label_one, label_structures, read_journal

__all__ = ["Label", "label_one", "label_structures", "read_journal"]
