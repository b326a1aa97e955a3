"""Map the top-level conf/ and datasets/ folders into the package.

They stay at the top of the repository (easy to find and edit), and a
non-editable ``pip install`` ships them as ``nnp/conf`` and ``nnp/datasets``.
setuptools ships data files per package, so every config folder (conf/data,
conf/model, ...) is declared as a package of its own: a folder left out is
dropped from the wheel, with a warning for each.
"""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent


def data_packages(package: str, folder: str) -> list[str]:
    """``package`` and one sub-package per sub-folder of ``folder`` (``nnp.conf.model``)."""
    root = HERE / folder
    subdirs = sorted(p for p in root.rglob("*") if p.is_dir() and not p.name.startswith((".", "_")))
    return [package] + [".".join([package, *p.relative_to(root).parts]) for p in subdirs]


conf_packages = data_packages("nnp.conf", "conf")
dataset_packages = data_packages("nnp.datasets", "datasets")
setup(
    packages=find_packages(include=["nnp", "nnp.*"]) + conf_packages + dataset_packages,
    package_dir={"nnp.conf": "conf", "nnp.datasets": "datasets"},
    package_data={
        "nnp.models": ["*.c"],  # the ANI descriptor kernel's source, compiled at first use
        **{name: ["*.yaml"] for name in conf_packages},
        **{name: ["*.h5", "*.extxyz", "*.xyz", "*.md"] for name in dataset_packages},
    },
    include_package_data=True,
)
