"""Committees of models with energy terms (nnp.committee_terms).

The committee's mean and spreads are those of the members' full potentials,
terms included, on molecules and a periodic cell (stress); the ANI fast path
agrees with the generic one; shared parameter-free terms run once; members
with different terms are refused; files, export, calculator and commands work.
"""

from __future__ import annotations

import pytest
import torch
from ase.build import bulk
from conftest import error_line, nnp_cli

from nnp import keys
from nnp.committee import Committee, load_model
from nnp.errors import NNPError
from tests.test_terms import all_terms, batch_of, ethanol, has_dftd3, potential

TERMS = {"zbl": {}, "coulomb": {"hidden": [8], "ewald_cutoff": 6.0}}


def frames():
    """A charged molecule squeezed so that zbl acts, and a periodic N/O rock-salt cell."""
    squeezed = ethanol()
    squeezed.positions *= 0.7
    squeezed.info["charge"] = 1
    cell = bulk("NaCl", "rocksalt", a=5.64, cubic=True)
    cell.numbers[:] = [7, 8] * 4
    cell.rattle(0.05, seed=1)
    cell.positions[1] = cell.positions[0] + [0.5, 0.6, 0.0]  # a close pair: zbl in the stress too
    return [squeezed, cell]


def committee_of(arch: str, terms: dict | None = None, n: int = 3) -> Committee:
    return Committee([potential(arch, dict(terms or TERMS), seed=s) for s in range(n)])


def detached(out: dict) -> dict:
    return {k: v.detach() for k, v in out.items()}


def evaluate(model, batch) -> dict:
    return detached(model(dict(batch), compute_stress=True))


@pytest.mark.parametrize("arch", ["ani", "painn"])  # the ANI fast path and the generic one
def test_mean_and_spreads_are_those_of_the_members_full_potentials(arch):
    terms = {**TERMS, **({"d3": {"functional": "pbe"}} if has_dftd3() else {})}
    committee = committee_of(arch, terms)
    assert committee.shared_descriptor == (arch == "ani")
    batch = batch_of(frames())
    out = evaluate(committee, batch)
    each = [evaluate(m, batch) for m in committee.members]
    for name in terms:  # every term really acts on these structures
        assert float(out[keys.TERM_ENERGY + name].abs().min()) > 1e-6, name
    energies = torch.stack([o[keys.ENERGY] for o in each])
    forces = torch.stack([o[keys.FORCES] for o in each])
    tight = {"rtol": 1e-10, "atol": 1e-10}
    torch.testing.assert_close(out[keys.ENERGY], energies.mean(0), **tight)
    torch.testing.assert_close(out[keys.FORCES], forces.mean(0), **tight)
    torch.testing.assert_close(out[keys.STRESS][1], torch.stack([o[keys.STRESS][1] for o in each]).mean(0), **tight)
    torch.testing.assert_close(out[keys.MEMBER_ENERGY], energies, **tight)
    torch.testing.assert_close(out[keys.MEMBER_FORCES], forces, **tight)
    torch.testing.assert_close(out[keys.ENERGY_STD], energies.std(0, unbiased=False), **tight)
    spread = ((forces - forces.mean(0)) ** 2).sum(-1).mean(0).sqrt()
    torch.testing.assert_close(out[keys.FORCES_STD], spread, **tight)
    idx_m = batch[keys.IDX_M]
    assert [float(out[keys.MAX_FORCES_STD][m]) for m in range(2)] == pytest.approx([float(spread[idx_m == m].max()) for m in range(2)])
    charges = torch.stack([o[keys.CHARGES] for o in each])
    torch.testing.assert_close(out[keys.CHARGES], charges.mean(0), **tight)
    torch.testing.assert_close(out[keys.CHARGES_STD], charges.std(0, unbiased=False), **tight)
    torch.testing.assert_close(out[keys.DIPOLE], torch.stack([o[keys.DIPOLE] for o in each]).mean(0), **tight)
    assert float(out[keys.CHARGES_STD].min()) > 0  # each member its own charge head
    # the mean charges still sum to each structure's total charge
    sums = torch.zeros(2, dtype=torch.float64).index_add(0, idx_m, out[keys.CHARGES])
    torch.testing.assert_close(sums, torch.tensor([1.0, 0.0], dtype=torch.float64), rtol=0, atol=1e-10)
    # the spreads include the terms: the same members without their coulomb terms spread otherwise
    for m in committee.members:
        m.terms = torch.nn.ModuleList([t for t in m.terms if t.name != "coulomb"])
    bare = evaluate(Committee(list(committee.members)), batch)
    assert float((bare[keys.ENERGY_STD] - out[keys.ENERGY_STD]).abs().max()) > 1e-6


def test_ani_fast_path_equals_the_generic_path_with_terms():
    committee = committee_of("ani")
    batch = batch_of(frames())
    fast = evaluate(committee, batch)
    committee.analytic_backward = False  # the fast path with autograd through the AEV
    autograd = evaluate(committee, batch)
    committee.shared_descriptor = False  # member by member, every member's own AEV
    generic = evaluate(committee, batch)
    committee.share_terms = False  # and zbl in every member instead of once
    unshared = evaluate(committee, batch)
    for other in (autograd, generic, unshared):
        assert fast.keys() == other.keys()
        for key in fast:
            torch.testing.assert_close(fast[key], other[key], rtol=1e-10, atol=1e-10, equal_nan=True, msg=key)
    no_forces = detached(committee_of("ani")(dict(batch), compute_forces=False))
    torch.testing.assert_close(no_forces[keys.ENERGY], fast[keys.ENERGY], rtol=1e-12, atol=1e-10)


def test_parameter_free_terms_run_once_and_coulomb_per_member():
    committee = committee_of("schnet")
    assert committee.shared_term_names == ["zbl"]
    calls: dict[str, int] = {}

    def count(name):
        return lambda *_: calls.__setitem__(name, calls.get(name, 0) + 1)

    committee.shared_terms[0].register_forward_hook(count("committee zbl"))
    for member in committee.members:
        for term in member.terms:
            term.register_forward_hook(count(f"member {term.name}"))
    committee(batch_of(frames()))
    assert calls == {"committee zbl": 1, "member coulomb": 3}


def test_d3_not_in_the_labels_is_left_out_of_a_fitting_committee():
    pytest.importorskip("dftd3")
    committee = committee_of("schnet", {**TERMS, "d3": {"functional": "pbe", "in_labels": False}}, n=2)
    batch = batch_of(frames()[:1])
    full = evaluate(committee, batch)
    committee.fitting = True  # as nnp evaluate does when it compares with labels
    assert all(m.fitting for m in committee.members)
    fitting = evaluate(committee, batch)
    each = [evaluate(m, batch) for m in committee.members]
    assert keys.TERM_ENERGY + "d3" not in fitting and float(full[keys.TERM_ENERGY + "d3"].abs().min()) > 0
    torch.testing.assert_close(fitting[keys.ENERGY], torch.stack([o[keys.ENERGY] for o in each]).mean(0))
    torch.testing.assert_close(full[keys.ENERGY] - fitting[keys.ENERGY], full[keys.TERM_ENERGY + "d3"])


def test_members_with_other_terms_are_refused_in_one_line(tmp_path):
    base = potential("schnet", TERMS, seed=0)
    base.save(tmp_path / "a.pt")
    potential("schnet", {"coulomb": TERMS["coulomb"]}, seed=1).save(tmp_path / "b.pt")
    with pytest.raises(NNPError, match=r"b\.pt: energy terms \[coulomb\] differ from .*a\.pt's \[zbl, coulomb\]"):
        load_model([tmp_path / "a.pt", tmp_path / "b.pt"])
    potential("schnet", {**TERMS, "zbl": {"inner": 0.4}}, seed=1).save(tmp_path / "c.pt")
    with pytest.raises(NNPError, match=r"c\.pt: terms\.zbl settings .*inner.*0\.4.* differ from .*a\.pt's"):
        load_model([tmp_path / "a.pt", tmp_path / "c.pt"])
    # a charge head of another width is the member's own business
    potential("schnet", {**TERMS, "coulomb": {"hidden": [4]}}, seed=1).save(tmp_path / "d.pt")
    assert load_model([tmp_path / "a.pt", tmp_path / "d.pt"]).n_members == 2


def test_file_export_and_calculator_round_trip(tmp_path):
    from nnp.calculator import NNPCalculator
    from nnp.export import export_potential, load_exported

    committee = committee_of("ani", n=2)
    batch = batch_of(frames())
    ref = evaluate(committee, batch)
    committee.save(tmp_path / "c.pt")
    payload = torch.load(tmp_path / "c.pt", weights_only=True)
    assert payload["version"] == 3 and all(sorted(m["terms"]) == ["coulomb", "zbl"] for m in payload["members"])
    back = load_model(tmp_path / "c.pt").double()
    assert isinstance(back, Committee) and back.shared_term_names == ["zbl"]
    export_potential(back, tmp_path / "c.ts")
    for model in (back, load_exported(tmp_path / "c.ts")):
        got = detached(model(dict(batch), compute_stress=True))
        for key in (keys.ENERGY, keys.FORCES, keys.ENERGY_STD, keys.FORCES_STD, keys.CHARGES, keys.CHARGES_STD, keys.TERM_ENERGY + "zbl"):
            torch.testing.assert_close(got[key], ref[key], rtol=1e-10, atol=1e-10, msg=key)
        torch.testing.assert_close(got[keys.STRESS][1], ref[keys.STRESS][1], rtol=1e-10, atol=1e-10)
    atoms = frames()[0]
    atoms.calc = NNPCalculator(tmp_path / "c.pt", dtype="float64")
    assert atoms.get_charges() == pytest.approx(ref[keys.CHARGES][: len(atoms)].numpy(), abs=1e-10)
    assert atoms.get_charges().sum() == pytest.approx(1.0, abs=1e-10)
    assert atoms.calc.results["energy_std"] == pytest.approx(float(ref[keys.ENERGY_STD][0]), abs=1e-10)
    assert atoms.calc.results["charges_std"] == pytest.approx(ref[keys.CHARGES_STD][: len(atoms)].numpy(), abs=1e-10)
    if has_dftd3():  # d3 runs outside TorchScript: refused in one line, as for single models
        with pytest.raises(NNPError, match="d3 term.*cannot be exported"):
            export_potential(committee_of("schnet", all_terms(), n=2), tmp_path / "d3.ts")
        assert not (tmp_path / "d3.ts").exists()


def test_train_a_committee_with_terms_and_combine_its_members(monkeypatch, capsys, tmp_path, tiny_h5):
    run = tmp_path / "run"
    code, text = nnp_cli(
        monkeypatch, capsys, "train", "data=demo", f"data.path={tiny_h5}", "model=ani", "model.hidden=[8]",
        "model.hidden_per_element=null", "terms=[coulomb,zbl]", "terms.coulomb.hidden=[4]", "ensemble.size=2",
        "trainer=cpu", "trainer.max_epochs=1", "data.batch_size=32", f"hydra.run.dir={run}",
    )
    assert code == 0, text[-3000:]
    committee = load_model(run / "model.pt")
    assert isinstance(committee, Committee) and committee.n_members == 2
    assert [[t.name for t in m.terms] for m in committee.members] == [["zbl", "coulomb"]] * 2
    members = [str(run / "members" / str(k) / "model.pt") for k in range(2)]
    code, text = nnp_cli(monkeypatch, capsys, "ensemble", "combine", *members, f"output={tmp_path / 'c.pt'}")
    assert code == 0, text[-3000:]
    combined = load_model(tmp_path / "c.pt")
    batch = {k: (v.float() if v.is_floating_point() else v) for k, v in batch_of(frames()[:1]).items()}
    a, b = detached(committee(dict(batch))), detached(combined(dict(batch)))
    for key in (keys.ENERGY, keys.FORCES, keys.ENERGY_STD, keys.CHARGES):
        torch.testing.assert_close(a[key], b[key], msg=key)
    # predict writes the mean charges and their spread
    import ase.io

    ase.io.write(tmp_path / "in.xyz", ethanol())
    code, text = nnp_cli(monkeypatch, capsys, "predict", f"ckpt={tmp_path / 'c.pt'}", f"input={tmp_path / 'in.xyz'}", f"output={tmp_path / 'p.extxyz'}")
    assert code == 0, text[-3000:]
    written = ase.io.read(tmp_path / "p.extxyz")
    assert written.get_charges().sum() == pytest.approx(0.0, abs=1e-5) and written.arrays["charges_std"].shape == (9,)
    assert {"energy_std", "energy_zbl", "energy_coulomb"} <= set(written.info)
    # a member of another run's terms cannot join
    potential("ani", {"zbl": {}}).float().save(tmp_path / "other.pt")
    code, text = nnp_cli(monkeypatch, capsys, "ensemble", "combine", members[0], str(tmp_path / "other.pt"), f"output={tmp_path / 'd.pt'}")
    assert code == 2 and "other.pt: energy terms [zbl] differ" in error_line(text)
    assert not (tmp_path / "d.pt").exists()

