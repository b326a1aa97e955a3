"""QM9 (134k molecules, B3LYP/6-31G(2df,p)) -> HDF5 in the ANI-1x layout.

Source: Ramakrishnan et al., Sci. Data 1, 140022 (2014), figshare collection
978904: ``dsgdb9nsd.xyz.tar.bz2`` (one xyz file per molecule) and
``atomref.txt`` (energies of the free atoms).

Each xyz file: line 1 the number of atoms n; line 2 ``gdb <id>`` and 15
properties (A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv); n lines
``El x y z q`` (Å, Mulliken charge); harmonic frequencies; SMILES (GDB-17,
relaxed); InChI (GDB-17, relaxed). Numbers may use Fortran's exponent
``*^`` (``1.2*^-5``).

Output (one group per formula, atoms ordered heavy atoms by Z, then H, the
same within a group):

- ``atomic_numbers`` (n,) uint8, ``coordinates`` (m, n, 3) float64 Å,
  ``charges`` (m, n) e, ``atom_order`` (m, n) int8 (index of each atom in
  the original xyz file), ``index`` (m,) int32 (the GDB id),
- the 15 properties as ``A`` ... ``Cv`` (m,) float64, energies
  (homo lumo gap zpve U0 U H G) converted from Hartree to eV, each with a
  ``unit`` attribute,
- ``smiles`` / ``inchi`` (m,) of the relaxed geometry, ``smiles_gdb``.

File attributes: ``energy_key`` U0, ``energy_unit`` eV, ``length_unit``
angstrom, ``property_units`` (JSON), the atom reference energies
``atomref_elements`` [1, 6, 7, 8, 9] and ``atomref_U0``/``U``/``H``/``G`` (eV),
and the archive's ``source_sha256``.
"""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnp.data.prepare.download import Remote, check_local, fetch, output_path
from nnp.data.progress import console, progress
from nnp.errors import NNPError
from nnp.outputs import atomic_path, hdf5_writer
from nnp.units import energy_factor

ARCHIVE = Remote(
    url="https://ndownloader.figshare.com/files/3195389",
    filename="dsgdb9nsd.xyz.tar.bz2",
    size=86_144_227,
    md5="ad1ebd51ee7f5b3a6e32e974e5d54012",
)
ATOMREF = Remote(
    url="https://ndownloader.figshare.com/files/3195395",
    filename="atomref.txt",
    size=964,
    md5="2d30b2df8329d8fd805c0a4d158a0a0f",
)
N_MOLECULES = 133_885

PROPERTIES = ("A", "B", "C", "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "Cv")
_HARTREE = frozenset({"homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"})
#: Units of the properties as written to the HDF5 file.
UNITS = {
    "A": "GHz", "B": "GHz", "C": "GHz", "mu": "Debye", "alpha": "bohr^3", "r2": "bohr^2", "Cv": "cal/(mol K)",
    **{p: "eV" for p in _HARTREE},
}
_ELEMENTS = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}
#: atomref.txt as published (Hartree): element -> (U0, U(298.15 K), H(298.15 K), G(298.15 K)).
ATOMREF_HARTREE = {
    1: (-0.500273, -0.498857, -0.497912, -0.510927),
    6: (-37.846772, -37.845355, -37.844411, -37.861317),
    7: (-54.583861, -54.582445, -54.581501, -54.598897),
    8: (-75.064579, -75.063163, -75.062219, -75.079532),
    9: (-99.718730, -99.717314, -99.716370, -99.733544),
}
_ATOMREF_PROPS = ("U0", "U", "H", "G")


@dataclass
class Molecule:
    index: int
    numbers: np.ndarray  # (n,) int
    positions: np.ndarray  # (n, 3) Å
    charges: np.ndarray  # (n,) e
    properties: np.ndarray  # (15,) as in the file (energies in Hartree)
    smiles_gdb: str
    smiles: str
    inchi: str


def parse_float(token: str, where: str = "") -> float:
    """A QM9 number; Fortran exponents ``1.2*^-5`` included."""
    try:
        return float(token.replace("*^", "e"))
    except ValueError:
        raise NNPError(f"{where}: {token!r} is not a number") from None


def parse_xyz(text: str, where: str) -> Molecule:
    """One QM9 xyz record; NNPError naming ``where`` and the line on any deviation."""
    lines = text.splitlines()
    try:
        n = int(lines[0].strip())
    except (IndexError, ValueError):
        raise NNPError(f"{where}: line 1: expected the number of atoms, got {lines[0][:40] if lines else ''!r}") from None
    if len(lines) < n + 5:
        raise NNPError(f"{where}: {len(lines)} lines, a QM9 record with {n} atoms has {n + 5}")
    head = lines[1].split()
    if len(head) != 17 or head[0] != "gdb":
        raise NNPError(f"{where}: line 2: expected 'gdb <id>' and 15 properties, got {len(head)} fields")
    index = int(head[1])
    props = np.array([parse_float(t, f"{where}: line 2") for t in head[2:]])
    numbers = np.empty(n, dtype=np.int64)
    positions = np.empty((n, 3))
    charges = np.empty(n)
    for k in range(n):
        fields = lines[2 + k].split()
        if len(fields) != 5 or fields[0] not in _ELEMENTS:
            raise NNPError(f"{where}: line {3 + k}: expected 'El x y z charge' with El in H C N O F, got {lines[2 + k][:60]!r}")
        numbers[k] = _ELEMENTS[fields[0]]
        positions[k] = [parse_float(t, f"{where}: line {3 + k}") for t in fields[1:4]]
        charges[k] = parse_float(fields[4], f"{where}: line {3 + k}")
    smiles = lines[n + 3].split()
    inchi = lines[n + 4].split()
    if len(smiles) != 2 or len(inchi) != 2:
        raise NNPError(f"{where}: lines {n + 4}-{n + 5}: expected two SMILES and two InChI (GDB and relaxed)")
    return Molecule(index, numbers, positions, charges, props, smiles[0], smiles[1], inchi[1])


def iter_records(source: Path) -> Iterator[tuple[str, str]]:
    """(name, text) of every ``.xyz`` file in a tar archive (any compression) or a folder."""
    if source.is_dir():
        for path in sorted(source.glob("*.xyz")):
            yield str(path), path.read_text()
        return
    try:
        with tarfile.open(source, mode="r|*") as tar:
            for member in tar:
                if member.isfile() and member.name.endswith(".xyz"):
                    handle = tar.extractfile(member)
                    yield f"{source.name}:{member.name}", handle.read().decode("utf-8", errors="replace")
    except (tarfile.TarError, EOFError, OSError) as err:
        raise NNPError(f"{source}: cannot read the archive ({err}); is it truncated? (expected {ARCHIVE.filename})") from None


def parse_atomref(text: str, where: str) -> dict[int, tuple[float, ...]]:
    """atomref.txt -> element -> (U0, U, H, G) Hartree."""
    table: dict[int, tuple[float, ...]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 7 and fields[0] in _ELEMENTS:
            table[_ELEMENTS[fields[0]]] = tuple(parse_float(t, where) for t in fields[2:6])
    if sorted(table) != sorted(_ELEMENTS.values()):
        raise NNPError(f"{where}: expected atom reference energies of H, C, N, O, F")
    return table


def _formula(numbers: np.ndarray) -> str:
    from ase.data import chemical_symbols
    from ase.formula import Formula

    return Formula.from_list([chemical_symbols[z] for z in numbers]).format("hill")


def convert(
    source: Path, out: Path, atomref: dict[int, tuple[float, ...]] | None = None, source_sha256: str = ""
) -> dict:
    """Archive (or folder) of QM9 xyz files -> HDF5; returns a summary."""
    ha = energy_factor("hartree")
    scale = np.array([ha if p in _HARTREE else 1.0 for p in PROPERTIES])
    groups: dict[str, dict[str, list]] = {}
    n_mol = 0
    with progress() as bar:
        task = bar.add_task(f"reading {source.name}", total=N_MOLECULES if source.name == ARCHIVE.filename else None)
        for name, text in iter_records(source):
            mol = parse_xyz(text, name)
            order = np.lexsort((mol.numbers, mol.numbers == 1))  # heavy atoms by Z, then H
            g = groups.setdefault(_formula(mol.numbers), {k: [] for k in ("numbers", "R", "q", "order", "p", "id", "smiles", "smiles_gdb", "inchi")})
            g["numbers"].append(mol.numbers[order])
            g["R"].append(mol.positions[order])
            g["q"].append(mol.charges[order])
            g["order"].append(order.astype(np.int8))
            g["p"].append(mol.properties * scale)
            g["id"].append(mol.index)
            g["smiles"].append(mol.smiles)
            g["smiles_gdb"].append(mol.smiles_gdb)
            g["inchi"].append(mol.inchi)
            n_mol += 1
            bar.advance(task)
    if n_mol == 0:
        raise NNPError(f"{source}: no .xyz records found (expected the QM9 archive {ARCHIVE.filename})")
    atomref = atomref or ATOMREF_HARTREE
    with atomic_path(out) as tmp:  # complete, or not there under the final name
        _write(tmp, groups, atomref, source, source_sha256, n_mol)
    return {"output": str(out), "molecules": n_mol, "formulas": len(groups), "energy_key": "U0 (eV)"}


def _write(tmp: Path, groups: dict, atomref: dict, source: Path, source_sha256: str, n_mol: int) -> None:
    ha = energy_factor("hartree")
    with hdf5_writer(tmp) as f:  # a full disk: one clear error, not a crash inside HDF5
        for formula in sorted(groups):
            g = groups[formula]
            by_id = np.argsort(g["id"])
            grp = f.create_group(formula)
            grp.create_dataset("atomic_numbers", data=g["numbers"][0].astype(np.uint8))
            grp.create_dataset("coordinates", data=np.stack(g["R"])[by_id])
            grp.create_dataset("charges", data=np.stack(g["q"])[by_id])
            grp.create_dataset("atom_order", data=np.stack(g["order"])[by_id])
            grp.create_dataset("index", data=np.asarray(g["id"], dtype=np.int32)[by_id])
            props = np.stack(g["p"])[by_id]
            for k, prop in enumerate(PROPERTIES):
                grp.create_dataset(prop, data=props[:, k]).attrs["unit"] = UNITS[prop]
            for key in ("smiles", "smiles_gdb", "inchi"):
                grp.create_dataset(key, data=np.array([g[key][i].encode() for i in by_id]))
        f.attrs.update(
            {
                "source": "QM9: Ramakrishnan et al., Sci. Data 1, 140022 (2014); figshare collection 978904",
                "source_file": source.name,
                "source_sha256": source_sha256,
                "level_of_theory": "B3LYP/6-31G(2df,p)",
                "energy_key": "U0",
                "energy_unit": "eV",
                "length_unit": "angstrom",
                "property_units": json.dumps(UNITS),
                "n_molecules": n_mol,
                "atomref_elements": np.array(sorted(atomref), dtype=np.int64),
                **{
                    f"atomref_{p}": np.array([atomref[z][k] * ha for z in sorted(atomref)])
                    for k, p in enumerate(_ATOMREF_PROPS)
                },
            }
        )


def prepare_qm9(
    out: str,
    source: str | None = None,
    atomref: str | None = None,
    download_dir: str | None = None,
    overwrite: bool = False,
) -> dict:
    """``nnp data prepare qm9``: download (or take ``source``), verify, convert to ``out``."""
    out_path = output_path(out, overwrite)
    where = Path(download_dir) if download_dir else out_path.parent
    if source:
        src = Path(source)
        digests = {"sha256": ""} if src.is_dir() else check_local(src, ARCHIVE)
    else:
        src, digests = fetch(ARCHIVE, where)
    table = None
    if atomref:
        table = parse_atomref(Path(atomref).read_text(), atomref)
    elif not source:
        ref_path, _ = fetch(ATOMREF, where)
        table = parse_atomref(ref_path.read_text(), str(ref_path))
    summary = convert(src, out_path, table, digests.get("sha256", ""))
    console.print(f"wrote {out_path}: {summary['molecules']} molecules in {summary['formulas']} formula groups")
    return summary
