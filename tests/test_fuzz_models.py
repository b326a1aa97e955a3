"""Fuzz tests of the model-file loader: every damaged or edited model file loads correctly or raises one NNPError.

Inputs, made by ``hypothesis`` from two small valid files (a single ANI model
and a two-member committee):

- bytes: truncations at any offset and flipped bytes of either file;
- payloads edited and saved with ``torch.save``: missing, extra and wrongly
  typed entries (strings, lists, None, numbers, tensors of the wrong shape or
  dtype) at the top level and inside ``model_config`` and ``state_dict``
  (missing, extra, reshaped, retyped tensors); bad ``species``; a wrong
  ``format`` / ``version`` / ``kind``; committee ``members`` (empty, not a
  list, not dicts, one member broken) and ``calibration`` (negative, a
  string, ...); one to three changes per file.

Each file is loaded with :func:`nnp.committee.load_model` (and
:meth:`Potential.load` for single models). A case passes when it ends in a
model that evaluates a small molecule (ethanol: H, C, O) or in an NNPError
whose message is one line naming the file; any other exception fails.

Counts: the default profile runs the numbers given to ``fuzz`` below (a few
hundred cases, well under 20 s); ``NNP_FUZZ_EXAMPLES=N`` (``make fuzz``)
runs N random cases per test instead.
"""

from __future__ import annotations

import copy
import io
import itertools
from pathlib import Path

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from test_fuzz import Raw, fuzz, time_limit

from nnp import keys
from nnp.committee import Committee, load_model
from nnp.errors import NNPError
from nnp.potential import Potential
from tests.test_models import batch_of, ethanol

CONFIG = {"name": "ani", "hidden": [4], "hidden_per_element": None, "radial_cutoff": 3.0, "angular_cutoff": 2.5}
SPECIES = [1, 6, 8]
_COUNTER = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("fuzz_models")


@pytest.fixture(scope="module")
def bases(work) -> dict[str, Raw]:
    torch.manual_seed(0)
    single, other = Potential.build(CONFIG, SPECIES), Potential.build(CONFIG, SPECIES)
    single.save(work / "single.pt")
    Committee([single, other]).save(work / "committee.pt")
    return {name: Raw((work / f"{name}.pt").read_bytes()) for name in ("single", "committee")}


class Payloads(dict):
    """The base files' payloads, with a short repr (hypothesis prints the fixtures of a failing case)."""

    def __repr__(self) -> str:
        return f"<payloads {sorted(self)}>"


class Batch(dict):
    def __repr__(self) -> str:
        return "<ethanol batch>"


@pytest.fixture(scope="module")
def payloads(work, bases) -> dict[str, dict]:
    return Payloads({name: torch.load(work / f"{name}.pt", weights_only=True) for name in bases})


@pytest.fixture(scope="module")
def batch() -> dict[str, torch.Tensor]:
    return Batch(batch_of([ethanol()]))


def case_path(work: Path) -> Path:
    return work / f"case{next(_COUNTER)}.pt"


def one_line(err: NNPError, path: Path) -> str:
    msg = str(err)
    assert "\n" not in msg and "\r" not in msg, f"message is not one line: {msg!r}"
    assert str(path) in msg, f"message does not name the file {path}: {msg!r}"
    return msg


def evaluate(model, batch) -> None:
    """A loaded model evaluates ethanol (an NNPError for an element the edited file does not know is fine)."""
    try:
        out = model({k: (v.to(model.atomref.dtype) if v.is_floating_point() else v) for k, v in batch.items()})
    except NNPError as err:
        assert "not known to this model" in str(err) or "out of range" in str(err), str(err)
        return
    assert out[keys.ENERGY].shape == (1,)
    assert out[keys.FORCES].shape == batch[keys.R].shape


def outcome(path: Path, batch, single: bool):
    """The loaded model (evaluated) or the NNPError (one line naming the file). Anything else propagates."""
    results = []
    loaders = [load_model] + ([Potential.load] if single else [])
    with time_limit():
        for loader in loaders:
            try:
                model = loader(path)
            except NNPError as err:
                one_line(err, path)
                results.append(err)
                continue
            evaluate(model, batch)
            results.append(model)
    return results[0]


# --------------------------------------------------------------- base files
def test_base_files_load(work, bases, batch):
    for name in bases:
        model = load_model(work / f"{name}.pt")
        assert isinstance(model, Committee if name == "committee" else Potential)
        out = model(batch)
        assert torch.isfinite(out[keys.ENERGY]).all()


# -------------------------------------------------------------------- bytes
@fuzz(60)
@given(data=st.data())
def test_truncated_or_flipped_bytes(work, bases, batch, data):
    name = data.draw(st.sampled_from(sorted(bases)), label="file")
    raw = bytearray(bases[name])
    if data.draw(st.booleans(), label="truncate"):
        raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="offset")]
    else:
        for _ in range(data.draw(st.integers(1, 4), label="flips")):
            i = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[i] ^= data.draw(st.integers(1, 255), label="mask")
    path = case_path(work)
    path.write_bytes(bytes(raw))
    outcome(path, batch, single=name == "single")


# ------------------------------------------------------------------ payloads
BAD_VALUES = [
    "x",
    "",
    [1, 2],
    [],
    None,
    -1,
    0,
    1.5,
    float("nan"),
    True,
    {},
    {"a": 1},
    torch.zeros(2, 3),
    torch.zeros(3, dtype=torch.int64),
    torch.tensor(1.0),
]
bad_values = st.sampled_from(BAD_VALUES)


def _strategy_edits(draw, payload: dict, where: str) -> list[str]:
    """Apply one edit to ``payload`` (in place); returns its description."""
    top = sorted(payload)
    kind = draw(st.sampled_from(["drop", "extra", "retype", "config", "state", "species", "header"]))
    if kind == "drop":
        key = draw(st.sampled_from(top))
        del payload[key]
        return f"{where}: drop {key}"
    if kind == "extra":
        payload[draw(st.sampled_from(["extra", "zzz"]))] = draw(bad_values)
        return f"{where}: extra entry"
    if kind == "retype":
        key = draw(st.sampled_from(top))
        payload[key] = draw(bad_values)
        return f"{where}: {key} = bad"
    if kind == "header":
        key, value = draw(st.sampled_from([
            ("format", "nnp.other"), ("format", None), ("version", 0), ("version", 99), ("version", "2"),
            ("version", 2.0), ("kind", "ensemble"), ("kind", None), ("kind", ["potential"]), ("kind", torch.zeros(2, 2)),
            ("dtype", "float16"), ("dtype", "int64"), ("dtype", torch.zeros(3, 3)), ("units", {"energy": "kcal/mol"}),
            ("units", "eV"), ("metadata", "abc"), ("metadata", [1, 2]), ("energy_scale", float("inf")),
        ]))
        payload[key] = value
        return f"{where}: {key} = {value!r}"
    if kind == "species":
        species = draw(st.sampled_from([[0, 6, 8], [1, 6, 200], [1, 1, 8], ["H", "C", "O"], [1, 6], [1, 6, 8, 7],
                                        [8, 6, 1], [], [1.0, 6.0, 8.0], [-1, 6, 8]]))
        if isinstance(payload.get("species"), list) or "members" not in payload:
            payload["species"] = species
        return f"{where}: species = {species!r}"
    if kind == "config":
        config = payload.get("model_config")
        if not isinstance(config, dict):
            return f"{where}: no model_config"
        op = draw(st.sampled_from(["drop", "extra", "retype"]))
        if op == "extra":
            config[draw(st.sampled_from(["bogus", "n_layers"]))] = draw(bad_values)
            return f"{where}: model_config extra"
        key = draw(st.sampled_from(sorted(config)))
        if op == "drop":
            del config[key]
        else:
            config[key] = draw(st.sampled_from(BAD_VALUES + [[4, "x"], [-4], [0], "relu", 1e9, -3.0]))
        return f"{where}: model_config {op} {key}"
    state = payload.get("state_dict")
    if not isinstance(state, dict) or not state:
        return f"{where}: no state_dict"
    key = draw(st.sampled_from(sorted(state)))
    op = draw(st.sampled_from(["drop", "extra", "reshape", "dtype", "retype", "nan"]))
    tensor = state[key]
    if op == "drop":
        del state[key]
    elif op == "extra":
        state["bogus.weight"] = torch.zeros(2)
    elif op == "reshape":
        state[key] = tensor.reshape(-1) if tensor.dim() != 1 else torch.cat([tensor, tensor])
    elif op == "dtype":
        state[key] = tensor.to(draw(st.sampled_from([torch.int64, torch.float64, torch.bool, torch.complex64])))
    elif op == "retype":
        state[key] = draw(bad_values)
    else:
        state[key] = torch.full_like(tensor, float("nan")) if tensor.is_floating_point() else tensor
    return f"{where}: state_dict {op} {key}"


def _edit_committee(draw, payload: dict) -> str:
    kind = draw(st.sampled_from(["members", "member", "member", "calibration", "top"]))
    if kind == "top":
        return _strategy_edits(draw, payload, "committee")
    if kind == "members":
        value = draw(st.sampled_from(["empty", "str", "not dicts", "one dict of None", "dict", "tensor"]))
        members = payload.get("members")
        payload["members"] = {"empty": [], "str": "members", "not dicts": [1, 2], "one dict of None": [None],
                              "dict": {"0": members[0]} if isinstance(members, list) and members else {},
                              "tensor": torch.zeros(2)}[value]
        return f"members = {value}"
    if kind == "member":
        members = payload.get("members")
        if not isinstance(members, list) or not members:
            return "no members"
        k = draw(st.integers(0, len(members) - 1))
        if isinstance(members[k], dict):
            return _strategy_edits(draw, members[k], f"member {k}")
        return f"member {k} not a dict"
    value = draw(st.sampled_from([-1.0, 0.0, float("nan"), "2", [1.0], None, True, torch.tensor(2.0),
                                  torch.zeros(2, 2), 2.0, 3]))
    key = draw(st.sampled_from(["energy", "forces", "applied", "data", "whole"]))
    if key == "whole":
        payload["calibration"] = value
    elif isinstance(payload.get("calibration"), dict):
        payload["calibration"][key] = value
    return f"calibration {key} = {value!r}"


def saved(work: Path, payload: dict) -> Path:
    path = case_path(work)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.write_bytes(buffer.getvalue())
    return path


@fuzz(150)
@given(data=st.data())
def test_single_model_payload_edits(work, payloads, batch, data):
    payload = copy.deepcopy(payloads["single"])
    applied = [_strategy_edits(data.draw, payload, "single") for _ in range(data.draw(st.integers(1, 3), label="n"))]
    result = outcome(saved(work, payload), batch, single=True)
    if any(a.split(": ", 1)[1].startswith(("drop model_config", "drop state_dict", "drop format", "format ="))
           for a in applied):
        assert isinstance(result, NNPError), f"{applied}: loaded without error"


@fuzz(150)
@given(data=st.data())
def test_committee_payload_edits(work, payloads, batch, data):
    payload = copy.deepcopy(payloads["committee"])
    applied = [_edit_committee(data.draw, payload) for _ in range(data.draw(st.integers(1, 3), label="n"))]
    result = outcome(saved(work, payload), batch, single=False)
    if any(a.startswith("members = ") for a in applied):
        assert isinstance(result, NNPError), f"{applied}: loaded without error"


def test_header_errors_are_one_line(work, payloads):
    for key, value, expect in [("format", "x", "not an nnp model file"), ("version", 99, "newer"),
                               ("version", torch.zeros(3, 3), "invalid format version"),
                               ("kind", torch.zeros(3, 3), "unknown model kind")]:
        payload = copy.deepcopy(payloads["single"])
        payload[key] = value
        path = saved(work, payload)
        with pytest.raises(NNPError) as err:
            load_model(path)
        assert expect in one_line(err.value, path)
