"""Models from other codes, converted to nnp model files (``nnp import FORMAT FILE output=OUT.pt``).

Each format is a named choice of :data:`nnp.importer.IMPORTERS`; a converter reads
tensors only (``weights_only=True``) and needs the other code neither to run nor
installed. :mod:`nnp.interop.torchani`: TorchANI ANI models and ensembles.
"""
