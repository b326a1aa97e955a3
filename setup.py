"""Map the top-level conf/ and datasets/ folders into the package.

They stay at the top of the repository (easy to find and edit), and a
non-editable ``pip install`` ships them as ``nnp/conf`` and ``nnp/datasets``.
"""

from setuptools import find_packages, setup

packages = find_packages(include=["nnp", "nnp.*"])
setup(
    packages=packages + ["nnp.conf", "nnp.datasets"],
    package_dir={"nnp.conf": "conf", "nnp.datasets": "datasets"},
    package_data={"nnp.conf": ["*.yaml", "**/*.yaml"], "nnp.datasets": ["*.h5", "*.extxyz", "*.xyz", "*.md"]},
    include_package_data=True,
)
