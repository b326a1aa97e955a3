"""Public data sets -> files nnp reads: download, verify, convert.

- :mod:`nnp.data.prepare.qm9`: QM9 archive of xyz files -> HDF5 (ANI-1x layout, eV).
- :mod:`nnp.data.prepare.ani1x`: ANI-1x release -> compact HDF5 with the chosen labels.
- :mod:`nnp.data.prepare.download`: downloads with published checksums.

Run as ``nnp data prepare qm9 out=qm9.h5`` (see :mod:`nnp.data.cli`).
"""

from nnp.data.prepare.ani1x import prepare_ani1x
from nnp.data.prepare.qm9 import prepare_qm9

#: name -> function(out, **options) -> summary dict
PREPARERS = {"qm9": prepare_qm9, "ani1x": prepare_ani1x}

__all__ = ["PREPARERS", "prepare_ani1x", "prepare_qm9"]
