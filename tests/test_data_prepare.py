"""`nnp data prepare`: QM9 archive -> HDF5, ANI-1x release -> compact HDF5, verified downloads.

The QM9 archive here is built in the real format (tab-separated, Fortran
``*^`` exponents, frequencies, SMILES and InChI lines) from eight real QM9
molecules (geometries and properties of gdb 1-6, 14, 15); no network is used:
downloads are exercised through ``file://`` URLs.
"""

from __future__ import annotations

import hashlib
import io
import tarfile

import h5py
import numpy as np
import pytest
from omegaconf import OmegaConf
from test_data_common import HARTREE, REPO, make_group, write_ani

from nnp import cli
from nnp.data import open_dataset
from nnp.data.prepare import ani1x, qm9
from nnp.data.prepare.download import Remote, fetch
from nnp.data.statistics import fit_atomref
from nnp.errors import NNPError

# (gdb id, [(El, x, y, z, mulliken)], 15 properties, SMILES (gdb, relaxed), InChI (gdb, relaxed))
MOLECULES = [
    (1, [("C", -0.0126981359, 1.0858041578, 0.0080009958, -0.535689), ("H", 0.002150416, -0.0060313176, 0.0019761204, 0.133921),
         ("H", 1.0117308433, 1.4637511618, 0.0002765748, 0.133922), ("H", -0.540815069, 1.4475266138, -0.8766437152, 0.133923),
         ("H", -0.5238136345, 1.4379326443, 0.9063972942, 0.133923)],
     [157.7118, 157.70997, 157.70699, 0.0, 13.21, -0.3877, 0.1171, 0.5048, 35.3641, 0.044749, -40.47893, -40.476062, -40.475117, -40.498597, 6.469],
     ("C", "C"), ("InChI=1S/CH4/h1H4", "InChI=1S/CH4/h1H4")),
    (2, [("N", -0.0404260543, 1.0241077531, 0.0625637998, -0.707143), ("H", 0.0172574639, 0.0125452063, -0.0273771593, 0.235712),
         ("H", 0.9157893661, 1.3587451948, -0.0287577581, 0.235712), ("H", -0.5202777357, 1.3435321258, -0.7755426124, 0.235719)],
     [293.60975, 293.54111, 191.39397, 1.6256, 9.46, -0.257, 0.0829, 0.3399, 26.1563, 0.034358, -56.525887, -56.523026, -56.522082, -56.544961, 6.316],
     ("N", "N"), ("InChI=1S/H3N/h1H3", "InChI=1S/H3N/h1H3")),
    (3, [("O", -0.0343604951, 0.9775395708, 0.0076015923, -0.589706), ("H", 0.0647664923, 0.0205721989, 0.0015346341, 0.294853),
         ("H", 0.8717903737, 1.3007924048, 0.0006931336, 0.294853)],
     [799.58812, 437.90386, 282.94545, 1.8511, 6.31, -0.2928, 0.0687, 0.3615, 19.0002, 0.021375, -76.404702, -76.401867, -76.400922, -76.422349, 6.002],
     ("O", "O"), ("InChI=1S/H2O/h1H2", "InChI=1S/H2O/h1H2")),
    (4, [("C", 0.5995394918, 0.0, 1.0, -0.207019), ("C", -0.5995394918, 0.0, 1.0, -0.207019),
         ("H", -1.6616385861, 0.0, 1.0, 0.207019), ("H", 1.6616385861, 0.0, 1.0, 0.207019)],
     [0.0, 35.6100361, 35.6100361, 0.0, 16.28, -0.2845, 0.0506, 0.3351, 59.5248, 0.026841, -77.308427, -77.305527, -77.304583, -77.327429, 8.574],
     ("C#C", "C#C"), ("InChI=1S/C2H2/c1-2/h1-2H", "InChI=1S/C2H2/c1-2/h1-2H")),
    (5, [("C", -0.0133239314, 1.1324657151, 0.0082758861, -0.01863), ("N", 0.0023107217, -0.0191585871, 0.0019287305, -0.172324),
         ("H", -0.0278026991, 2.1989492963, 0.0141537903, 0.190954)],
     [0.0, 44.593883, 44.593883, 2.8937, 12.99, -0.3604, 0.0191, 0.3796, 48.7476, 0.016601, -93.411888, -93.40937, -93.408425, -93.431246, 6.278],
     ("C#N", "C#N"), ("InChI=1S/CHN/c1-2/h1H", "InChI=1S/CHN/c1-2/h1H")),
    (6, [("C", -0.0139776956, 1.1802114286, 0.0077524981, 0.085123), ("O", 0.0023139861, -0.0196636557, 0.0021610727, -0.284207),
         ("H", 0.9149602868, 1.789511172, 0.0039565555, 0.099542), ("H", -0.9591097173, 1.7640179751, 0.0171828436, 0.099542)],
     [285.48839, 38.9823, 34.29892, 2.1089, 14.18, -0.267, -0.0406, 0.2263, 59.9891, 0.026603, -114.483613, -114.480746, -114.479802, -114.505268, 6.413],
     ("C=O", "C=O"), ("InChI=1S/CH2O/c1-2/h1H2", "InChI=1S/CH2O/c1-2/h1H2")),
    (14, [("C", -0.0086050396, 1.5020382883, -0.0068121748, -0.297513), ("C", 0.0109931006, -0.0176487687, -0.013770355, 0.080141),
          ("O", 0.6808884095, -0.4404180314, -1.1931320987, -0.431233), ("H", 1.0115333417, 1.896620303, -0.0192015475, 0.102345),
          ("H", -0.5315986204, 1.8807610923, -0.8897465868, 0.109478), ("H", -0.5167457158, 1.876117708, 0.8871073864, 0.100212),
          ("H", 0.5237712083, -0.3891229547, 0.8882408183, 0.039287), ("H", -1.0202754406, -0.4050726108, 0.0169067033, 0.027523),
          ("H", 0.6952957263, -1.4017956761, -1.2014849452, 0.26976)],
     [35.09545, 9.3686, 8.1497, 1.4131, 27.87, -0.2619, 0.0798, 0.3417, 193.1659, 0.079754, -154.972731, -154.968412, -154.967467, -154.998148, 13.546],
     ("CCO", "CCO"), ("InChI=1S/C2H6O/c1-2-3/h3H,2H2,1H3", "InChI=1S/C2H6O/c1-2-3/h3H,2H2,1H3")),
    (15, [("C", -0.0148214665, 1.3924123373, 0.0056710438, -0.170561), ("O", -0.0047153748, -0.0136066049, 0.0145965754, -0.377519),
          ("C", 0.6379489343, -0.5532967625, -1.1135823232, -0.170563), ("H", 1.0052835779, 1.810158071, 0.0046563051, 0.098957),
          ("H", -0.5468955976, 1.7934353007, -0.8725105077, 0.11411), ("H", -0.5300289536, 1.7229196896, 0.9110169641, 0.098956),
          ("H", 0.1399379234, -0.2559933348, -2.0509837531, 0.098957), ("H", 1.6926527455, -0.2386838236, -1.1747774277, 0.114113),
          ("H", 0.5995943514, -1.6418016127, -1.0240761566, 0.09895)],
     [39.37691, 10.04033, 8.90353, 1.1502, 28.13, -0.2525, 0.091, 0.3435, 187.1015, 0.079534, -154.960361, -154.956045, -154.9551, -154.985747, 12.934],
     ("COC", "COC"), ("InChI=1S/C2H6O/c1-3-2/h1-2H3", "InChI=1S/C2H6O/c1-3-2/h1-2H3")),
]

ATOMREF_TXT = """   Element   ZPVE         U (0 K)      U (298.15 K)    H (298.15 K)    G (298.15 K)     CV
   ==========================================================================================
      H     0.000000     -0.500273      -0.498857       -0.497912       -0.510927       2.981
      C     0.000000    -37.846772     -37.845355      -37.844411      -37.861317       2.981
      N     0.000000    -54.583861     -54.582445      -54.581501      -54.598897       2.981
      O     0.000000    -75.064579     -75.063163      -75.062219      -75.079532       2.981
      F     0.000000    -99.718730     -99.717314      -99.716370      -99.733544       2.981
"""


def _num(x: float, fortran: bool = False) -> str:
    """A number as QM9 writes it; ``fortran`` uses the ``*^`` exponent (as some QM9 files do)."""
    if fortran and x != 0:
        mantissa, exp = f"{x:.10e}".split("e")
        return f"{mantissa}*^{int(exp)}"
    return "0." if x == 0 else repr(x)


def qm9_record(index, atoms, props, smiles, inchi) -> str:
    lines = [str(len(atoms)), f"gdb {index}\t" + "\t".join(_num(p) for p in props) + "\t"]
    for k, (el, x, y, z, q) in enumerate(atoms):
        small = [abs(v) < 0.003 for v in (x, y, z)]  # write tiny coordinates Fortran-style
        lines.append("\t".join([el] + [_num(v, s) for v, s in zip((x, y, z), small, strict=True)] + [_num(q, k == 0 and index == 2)]))
    n_freq = 3 * len(atoms) - (5 if smiles[0] in ("C#C", "C#N") else 6)
    lines.append("\t".join(f"{f:.4f}" for f in np.linspace(400.0, 3200.0, n_freq)))
    lines.append(f"{smiles[0]}\t{smiles[1]}\t")
    lines.append(f"{inchi[0]}\t{inchi[1]}")
    return "\n".join(lines) + "\n"


def write_archive(path, records: dict[str, str] | None = None):
    records = records or {f"dsgdb9nsd_{m[0]:06d}.xyz": qm9_record(*m) for m in MOLECULES}
    with tarfile.open(path, "w:bz2") as tar:
        for name, text in records.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture
def archive(tmp_path):
    return write_archive(tmp_path / "dsgdb9nsd.xyz.tar.bz2")


def test_qm9_record_uses_fortran_exponents():
    text = qm9_record(*MOLECULES[0])
    assert "*^-3" in text and text.splitlines()[1].startswith("gdb 1\t157.7118")
    assert qm9.parse_float("2.150416*^-3") == pytest.approx(0.002150416)


def test_qm9_archive_to_hdf5(tmp_path, archive):
    out = tmp_path / "qm9.h5"
    assert cli.main(["data", "prepare", "qm9", f"out={out}", f"source={archive}"]) == 0
    with h5py.File(out, "r") as f:
        assert sorted(f.keys()) == sorted(["CH4", "H3N", "H2O", "C2H2", "CHN", "CH2O", "C2H6O"])
        ch4 = f["CH4"]
        np.testing.assert_allclose(ch4["coordinates"][0, 1], [0.002150416, -0.0060313176, 0.0019761204], atol=1e-12)  # *^ parsed
        assert ch4["U0"][0] == pytest.approx(-40.47893 * HARTREE, rel=1e-12)
        assert ch4["homo"][0] == pytest.approx(-0.3877 * HARTREE, rel=1e-12) and ch4["homo"].attrs["unit"] == "eV"
        assert ch4["A"][0] == pytest.approx(157.7118) and ch4["A"].attrs["unit"] == "GHz"
        assert f["H3N"]["charges"][0, 0] == pytest.approx(-0.707143)
        g = f["C2H6O"]  # ethanol (gdb 14) and dimethyl ether (gdb 15): one group, one atom order
        assert g["index"][()].tolist() == [14, 15]
        assert [s.decode() for s in g["smiles"][()]] == ["CCO", "COC"]
        assert g["inchi"][1].decode() == "InChI=1S/C2H6O/c1-3-2/h1-2H3"
        assert g["atomic_numbers"][()].tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
        assert g["atom_order"][1].tolist() == [0, 2, 1, 3, 4, 5, 6, 7, 8]  # ether: C O C -> C C O
        np.testing.assert_allclose(g["coordinates"][1, 2], [-0.0047153748, -0.0136066049, 0.0145965754])  # the O
        assert list(f.attrs["atomref_elements"]) == [1, 6, 7, 8, 9]
        assert f.attrs["atomref_U0"][0] == pytest.approx(-0.500273 * HARTREE)
        assert f.attrs["energy_unit"] == "eV" and f.attrs["n_molecules"] == 8
        assert f.attrs["source_sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()

    # the shipped config reads it: U0 in eV, no forces, grouped by SMILES
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "qm9.yaml"))
    cfg["path"] = str(out)
    ds = open_dataset(cfg)
    assert len(ds) == 8 and not ds.has_forces and len(ds.group_names()) == 8
    assert sorted(ds.energies()) == pytest.approx(sorted(m[2][10] * HARTREE for m in MOLECULES))
    ref, rms = fit_atomref(ds, np.arange(len(ds)), ds.elements())
    assert np.isfinite(ref).all() and rms < 1.0

    # refuses to overwrite unless asked
    assert cli.main(["data", "prepare", "qm9", f"out={out}", f"source={archive}"]) == 2
    assert cli.main(["data", "prepare", "qm9", f"out={out}", f"source={archive}", "overwrite=true"]) == 0


def test_qm9_atomref_file(tmp_path, archive):
    (tmp_path / "atomref.txt").write_text(ATOMREF_TXT)
    table = qm9.parse_atomref(ATOMREF_TXT, "atomref.txt")
    assert table == qm9.ATOMREF_HARTREE
    out = tmp_path / "qm9.h5"
    qm9.prepare_qm9(str(out), source=str(archive), atomref=str(tmp_path / "atomref.txt"))
    with h5py.File(out, "r") as f:
        assert f.attrs["atomref_G"][4] == pytest.approx(-99.733544 * HARTREE)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda t: "\n".join(t.splitlines()[:-1]), "bad.tar.bz2:dsgdb9nsd_000003.xyz: 7 lines, a QM9 record with 3 atoms has 8"),
        (lambda t: t.replace("-0.0343604951", "-0.03436O4951"), "dsgdb9nsd_000003.xyz: line 3: '-0.03436O4951' is not a number"),
        (lambda t: t.replace("O\t", "Xx\t", 1), "line 3: expected 'El x y z charge'"),
        (lambda t: t.replace("gdb 3\t", "gdb 3\t1.0\t", 1), "line 2: expected 'gdb <id>' and 15 properties"),
    ],
)
def test_qm9_bad_records(tmp_path, mangle, message):
    records = {f"dsgdb9nsd_{m[0]:06d}.xyz": qm9_record(*m) for m in MOLECULES}
    records["dsgdb9nsd_000003.xyz"] = mangle(records["dsgdb9nsd_000003.xyz"])
    path = write_archive(tmp_path / "bad.tar.bz2", records)
    with pytest.raises(NNPError, match=message):
        qm9.prepare_qm9(str(tmp_path / "out.h5"), source=str(path))
    assert not (tmp_path / "out.h5").exists()


def test_qm9_truncated_archive(tmp_path, archive):
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(NNPError, match="cannot read the archive"):
        qm9.prepare_qm9(str(tmp_path / "out.h5"), source=str(archive))


def test_download_verified_through_file_url(tmp_path, archive, monkeypatch):
    data = archive.read_bytes()
    good = Remote(url=archive.as_uri(), filename="dsgdb9nsd.xyz.tar.bz2", size=len(data), md5=hashlib.md5(data).hexdigest())
    dest, digests = fetch(good, tmp_path / "dl")
    assert dest.read_bytes() == data and digests["sha256"] == hashlib.sha256(data).hexdigest()
    assert fetch(good, tmp_path / "dl")[0] == dest  # reused after verification
    bad = Remote(url=archive.as_uri(), filename="other.tar.bz2", size=len(data), md5="0" * 32)
    with pytest.raises(NNPError, match="does not match the published"):
        fetch(bad, tmp_path / "dl")
    assert not list((tmp_path / "dl").glob("*.part")) and not (tmp_path / "dl" / "other.tar.bz2").exists()
    with pytest.raises(NNPError, match="cannot download .* pass source=PATH"):
        fetch(Remote(url=(tmp_path / "missing").as_uri(), filename="x"), tmp_path / "dl")
    # the whole `prepare` path without source=: download (here from file://), verify, convert
    (tmp_path / "atomref.txt").write_text(ATOMREF_TXT)
    ref = (tmp_path / "atomref.txt").read_bytes()
    monkeypatch.setattr(qm9, "ARCHIVE", good)
    monkeypatch.setattr(qm9, "ATOMREF", Remote((tmp_path / "atomref.txt").as_uri(), "atomref.txt", len(ref), hashlib.md5(ref).hexdigest()))
    summary = qm9.prepare_qm9(str(tmp_path / "q.h5"), download_dir=str(tmp_path / "dl2"))
    assert summary["molecules"] == 8 and (tmp_path / "dl2" / "atomref.txt").is_file()


def test_official_sources_are_figshare():
    assert qm9.ARCHIVE.url == "https://ndownloader.figshare.com/files/3195389"
    assert qm9.ATOMREF.url == "https://ndownloader.figshare.com/files/3195395"
    assert ani1x.RELEASE.url == "https://ndownloader.figshare.com/files/18112775"
    assert all(len(r.md5) == 32 for r in (qm9.ARCHIVE, qm9.ATOMREF, ani1x.RELEASE))


# ---------------------------------------------------------------------- ANI-1x
def _release_like(path):
    """Two formula groups with the release's keys: DFT labels with NaN rows, sparse CCSD(T) energies."""
    rng = np.random.default_rng(0)
    groups = {}
    for name, numbers in {"C1H4": [6, 1, 1, 1, 1], "C2H6O1": [6, 6, 8, 1, 1, 1, 1, 1, 1]}.items():
        coords, energy, forces = make_group(numbers, 10, rng)
        energy[[2, 7]] = np.nan
        forces[5, 0, 0] = np.nan
        ccsd = np.full(10, np.nan)
        ccsd[:3] = energy[:3] - 0.01
        groups[name] = {"atomic_numbers": np.array(numbers, np.uint8), "coordinates": coords.astype(np.float32),
                        "wb97x_dz.energy": energy, "wb97x_dz.forces": forces.astype(np.float32),
                        "ccsd(t)_cbs.energy": ccsd, "hf_dz.energy": energy + 1.0, "wb97x_dz.dipole": rng.normal(size=(10, 3))}
    return write_ani(path, groups)


def test_ani1x_release_to_compact_file(tmp_path):
    src = _release_like(tmp_path / "ani1x-release.h5")
    out = tmp_path / "ani1x.h5"
    assert cli.main(["data", "prepare", "ani1x", f"out={out}", f"source={src}"]) == 0
    with h5py.File(out, "r") as f, h5py.File(src, "r") as s:
        g = f["C1H4"]
        assert sorted(g.keys()) == ["atomic_numbers", "coordinates", "wb97x_dz.energy", "wb97x_dz.forces"]
        assert len(g["coordinates"]) == 7  # rows 2 and 7 (NaN energy) and 5 (NaN force) dropped
        keep = [0, 1, 3, 4, 6, 8, 9]
        np.testing.assert_array_equal(g["coordinates"][()], s["C1H4"]["coordinates"][keep])
        np.testing.assert_array_equal(g["wb97x_dz.energy"][()], s["C1H4"]["wb97x_dz.energy"][keep])
        assert f.attrs["energy_unit"] == "hartree" and f.attrs["n_skipped_nan"] == 6
        assert g["coordinates"].id.get_offset() is not None  # contiguous: fast reads
    cfg = OmegaConf.to_container(OmegaConf.load(REPO / "conf" / "data" / "ani1x.yaml"))
    cfg["path"] = str(out)
    ds = open_dataset(cfg)
    assert len(ds) == 14 and ds.n_skipped == 0 and ds.has_forces
    # energy-only subset at another level of theory
    out2 = tmp_path / "ccsd.h5"
    assert cli.main(["data", "prepare", "ani1x", f"out={out2}", f"source={src}", "energy_key=ccsd(t)_cbs.energy", "forces_key=null"]) == 0
    with h5py.File(out2, "r") as f:
        assert len(f["C2H6O1"]["coordinates"]) == 2 and "wb97x_dz.forces" not in f["C2H6O1"]  # rows 0, 1 (row 2 NaN)


def test_ani1x_bad_source(tmp_path):
    src = _release_like(tmp_path / "r.h5")
    assert cli.main(["data", "prepare", "ani1x", f"out={tmp_path / 'o.h5'}", f"source={src}", "energy_key=nope.energy"]) == 2
    with pytest.raises(NNPError, match="no energy dataset 'nope.energy'"):
        ani1x.prepare_ani1x(str(tmp_path / "o.h5"), source=str(src), energy_key="nope.energy")
    assert not (tmp_path / "o.h5").exists() and not (tmp_path / "o.h5.part").exists()
    with pytest.raises(NNPError, match="unknown data set 'qm7'"):
        from nnp.data.cli import main

        main(["prepare", "qm7", "out=x.h5"])
