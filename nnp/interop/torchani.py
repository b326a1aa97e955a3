"""TorchANI model states -> nnp ANI potentials (a committee for an ensemble).

Reads the tensors of a saved TorchANI ``state_dict`` (``torch.load(...,
weights_only=True)``; TorchANI itself is not needed) of ANI-1x, ANI-2x, ANI-1ccx or
another ANI-style model with CELU networks, in either layout:

- TorchANI 2.x ``model.state_dict()``: ``potentials.nnp.aev_computer.radial.eta``,
  ``potentials.nnp.neural_networks.members.K.atomics.H.layers.L.weight`` / ``final_layer``,
  ``energy_shifter.self_energies``, ``atomic_numbers``;
- TorchANI <= 2.2 (and 2.x's ``legacy_state_dict()``): ``aev_computer.EtaR``, ``ShfR``,
  ``EtaA``, ``Zeta``, ``ShfA``, ``ShfZ``, ``neural_networks.K.H.0.weight`` (a
  ``Sequential`` of Linear and CELU), ``energy_shifter.self_energies``.

What maps to what:

- AEV constants -> the model config of :class:`nnp.models.ani.ANI` (exact float32
  values, so a float64 nnp model computes TorchANI's AEV to rounding). Cutoffs are
  not in a state dict: TorchANI spaces the shifts evenly up to the cutoff
  (``linspace(start, cutoff, n + 1)[:-1]``), which gives them back (5.2 / 3.5 Å for
  ANI-1x, 5.1 / 3.5 Å for ANI-2x); ``radial_cutoff=`` / ``angular_cutoff=`` set them.
- Element order: TorchANI orders species as the model lists them (ANI-2x: H C N O
  S F Cl), nnp by atomic number (H C N O F S Cl). The AEV blocks follow the species
  order, so the first layer's input columns are permuted to nnp's layout: the same
  function, not an approximation.
- Element networks -> per-element widths (``hidden_per_element``), weights copied.
- Self energies (Hartree) -> atom reference energies (eV); the networks' outputs are
  in Hartree, so the potential's ``energy_scale`` is 1 Hartree in eV.
- An ensemble of K network sets -> a committee of K members (mean = TorchANI's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from nnp.errors import NNPError

#: AEV constants under both layouts' names -> ours
_AEV_KEYS = {
    "radial.eta": "radial_eta", "EtaR": "radial_eta",
    "radial.shifts": "radial_shifts", "ShfR": "radial_shifts",
    "angular.eta": "angular_eta", "EtaA": "angular_eta",
    "angular.zeta": "angular_zeta", "Zeta": "angular_zeta",
    "angular.shifts": "angular_radial_shifts", "ShfA": "angular_radial_shifts",
    "angular.sections": "sections", "ShfZ": "sections",
}
#: Entries that carry nothing a conversion needs (TorchANI's neighbor-list defaults).
_IGNORED = {"aev_computer.default_cell", "aev_computer.default_shifts"}


@dataclass
class TorchANIState:
    """The parts of a TorchANI state an nnp ANI model needs."""

    symbols: list[str]  # TorchANI's species order
    aev: dict[str, torch.Tensor]
    triu_index: torch.Tensor | None
    self_energies: torch.Tensor | None  # Hartree, in ``symbols`` order
    # per member: element symbol -> [(weight, bias), ...] in layer order
    members: list[dict[str, list[tuple[torch.Tensor, torch.Tensor]]]] = field(default_factory=list)


def read_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a saved TorchANI state dict (``weights_only=True``); one line on failure."""
    path = Path(path)
    if not path.is_file():
        raise NNPError(f"{path}: file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for a bad file
        text = str(err)
        if "Unsupported global" in text or "This file can still be loaded" in text:
            raise NNPError(f"{path}: holds Python objects, not only tensors (a whole pickled model?): "
                           "save the model's state_dict() with TorchANI and import that") from None
        raise NNPError(f"{path}: not a readable PyTorch file ({type(err).__name__})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not state:
        raise NNPError(f"{path}: not a TorchANI state dict (expected a mapping of names to tensors)")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise NNPError(f"{path}: entry {key!r} is not a tensor: not a TorchANI state dict")
    return dict(state)


def parse_state(state: Mapping[str, torch.Tensor], source: str, elements: Sequence[str] | None = None) -> TorchANIState:
    """Sort a state dict's entries into AEV constants, self energies and element networks."""
    aev: dict[str, torch.Tensor] = {}
    layers: dict[tuple[int, str], dict[float, dict[str, torch.Tensor]]] = {}
    symbol_order: list[str] = []
    triu = self_energies = numbers = None
    for key, value in state.items():
        name = key[len("potentials.nnp."):] if key.startswith("potentials.nnp.") else key
        if name in _IGNORED or name == "species_converter.conv_tensor":
            continue
        if name.startswith("potentials."):
            raise NNPError(f"{source}: entry {key!r}: a potential term besides the networks "
                           "(repulsion, dispersion, charges) that nnp import does not convert")
        if name == "atomic_numbers":
            numbers = value
        elif name == "energy_shifter.self_energies":
            self_energies = value
        elif name == "aev_computer.triu_index":
            triu = value
        elif name.startswith("aev_computer."):
            leaf = name[len("aev_computer."):].replace("radial_terms.", "radial.").replace("angular_terms.", "angular.")
            if leaf not in _AEV_KEYS:
                raise NNPError(f"{source}: entry {key!r}: an AEV setting nnp import does not know")
            aev[_AEV_KEYS[leaf]] = value.detach().flatten().double()
        elif name.startswith("neural_networks."):
            parts = [p for p in name.split(".")[1:] if p not in ("members", "atomics", "layers")]
            if len(parts) == 3:
                parts = ["0", *parts]
            if len(parts) != 4 or not parts[0].isdigit() or parts[3] not in ("weight", "bias"):
                raise NNPError(f"{source}: entry {key!r}: not an element network layer of an ANI model")
            member, symbol, index, kind = int(parts[0]), parts[1], parts[2], parts[3]
            position = math.inf if index == "final_layer" else float(index) if index.isdigit() else None
            if position is None:
                raise NNPError(f"{source}: entry {key!r}: not an element network layer of an ANI model")
            if member == 0 and symbol not in symbol_order:
                symbol_order.append(symbol)
            layers.setdefault((member, symbol), {}).setdefault(position, {})[kind] = value.detach()
        else:
            raise NNPError(f"{source}: entry {key!r} is not part of a TorchANI ANI model")
    if not layers:
        raise NNPError(f"{source}: no element networks (entries neural_networks.*): not a TorchANI ANI model state")
    missing = [k for k in ("radial_eta", "radial_shifts", "angular_eta", "angular_zeta", "angular_radial_shifts", "sections") if k not in aev]
    if missing:
        raise NNPError(f"{source}: the AEV setting {missing[0]!r} is missing (entries aev_computer.*)")
    symbols = _element_order(symbol_order, numbers, elements, source)
    n_members = 1 + max(m for m, _ in layers)
    members = []
    for m in range(n_members):
        nets: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        for label, symbol in zip(symbol_order, symbols):
            stack = layers.get((m, label))
            if stack is None:
                raise NNPError(f"{source}: ensemble member {m} has no network for element {symbol}")
            net = []
            for position in sorted(stack):
                entry = stack[position]
                if "weight" not in entry or "bias" not in entry:
                    raise NNPError(f"{source}: element {symbol}, member {m}: a layer without "
                                   f"{'bias' if 'weight' in entry else 'weight'} (nnp's element networks have biases)")
                net.append((entry["weight"], entry["bias"]))
            nets[symbol] = net
        members.append(nets)
    if self_energies is not None and self_energies.numel() != len(symbols):
        raise NNPError(f"{source}: {self_energies.numel()} self energies for {len(symbols)} elements")
    return TorchANIState(symbols, aev, triu, self_energies, members)


def _element_order(labels: list[str], numbers: torch.Tensor | None, elements: Sequence[str] | None, source: str) -> list[str]:
    """Element symbols in TorchANI's species order: ``elements=`` given, else the stored
    atomic numbers, else the networks' names (TorchANI names them by symbol)."""
    from ase.data import atomic_numbers, chemical_symbols

    if elements:
        symbols = [str(e) for e in elements]
        if len(symbols) != len(labels):
            raise NNPError(f"elements={','.join(symbols)}: {len(symbols)} symbols for {len(labels)} element networks in {source}")
    elif numbers is not None:
        symbols = [chemical_symbols[int(z)] for z in numbers.tolist()]
        if labels != symbols and all(label in atomic_numbers for label in labels) and sorted(labels) == sorted(symbols):
            raise NNPError(f"{source}: the networks' order {','.join(labels)} differs from atomic_numbers {','.join(symbols)}")
    else:
        symbols = labels
    for s in symbols:
        if s not in atomic_numbers:
            raise NNPError(f"{source}: element networks are named {','.join(labels)}, not by element: "
                           "give their elements in order, e.g. elements=[H,C,N,O]")
    return symbols


def _cutoff(shifts: torch.Tensor, given: float | None, what: str, source: str) -> float:
    """The cutoff TorchANI spaced ``shifts`` up to (or ``given``)."""
    if given is not None:
        return float(given)
    if shifts.numel() >= 2:
        steps = shifts[1:] - shifts[:-1]
        if float((steps - steps[0]).abs().max()) < 1e-5 * max(1.0, float(steps[0].abs())):
            return round(float(shifts[0] + shifts.numel() * steps[0]), 4)
    raise NNPError(f"{source}: {what} shifts are not evenly spaced, so the cutoff is not known: give {what}_cutoff=...")


def to_potentials(
    parsed: TorchANIState,
    source: str,
    activation: str = "celu",
    radial_cutoff: float | None = None,
    angular_cutoff: float | None = None,
    dtype: torch.dtype = torch.float32,
) -> list:
    """One nnp :class:`~nnp.potential.Potential` in ``dtype`` per ensemble member."""
    from ase.data import atomic_numbers

    from nnp.potential import Potential
    from nnp.units import energy_factor

    aev = parsed.aev
    sections = aev["sections"]
    n_sections = sections.numel()
    expected = torch.tensor([(2 * k + 1) * math.pi / (2 * n_sections) for k in range(n_sections)], dtype=torch.float64)
    if float((sections - expected).abs().max()) > 1e-6:
        raise NNPError(f"{source}: angular sections {sections.tolist()} are not the evenly spaced "
                       "(2k+1) pi / 2n of ANI models: not supported")
    hartree = energy_factor("hartree")
    symbols = parsed.symbols
    first = parsed.members[0]
    widths = {s: [int(w.shape[0]) for w, _ in first[s][:-1]] for s in symbols}
    for m, nets in enumerate(parsed.members):
        for s in symbols:
            if [int(w.shape[0]) for w, _ in nets[s][:-1]] != widths[s] or int(nets[s][-1][0].shape[0]) != 1:
                raise NNPError(f"{source}: member {m}'s network for {s} has other layer widths than member 0's, "
                               "or more than one output")
    config: dict[str, Any] = {
        "name": "ani",
        "radial_cutoff": _cutoff(aev["radial_shifts"], radial_cutoff, "radial", source),
        "angular_cutoff": _cutoff(aev["angular_radial_shifts"], angular_cutoff, "angular", source),
        "radial_eta": float(aev["radial_eta"][0]),
        "radial_shifts": aev["radial_shifts"].tolist(),
        "angular_eta": float(aev["angular_eta"][0]),
        "angular_zeta": float(aev["angular_zeta"][0]),
        "angular_radial_shifts": aev["angular_radial_shifts"].tolist(),
        "angular_sections": n_sections,
        "activation": activation,
        "hidden": widths[symbols[0]],
        "hidden_per_element": widths,
    }
    numbers = [atomic_numbers[s] for s in symbols]
    ours = sorted(numbers)
    se = parsed.self_energies.double() if parsed.self_energies is not None else torch.zeros(len(symbols), dtype=torch.float64)
    atomref = [float(se[numbers.index(z)]) * hartree for z in ours]
    potentials = []
    for nets in parsed.members:
        pot = Potential.build(config, ours, atomref, energy_scale=hartree)
        columns = _aev_columns(pot.model.aev, [numbers.index(z) for z in ours], parsed.triu_index, len(symbols))
        n_in = int(nets[symbols[0]][0][0].shape[1])
        if n_in != columns.numel():
            raise NNPError(f"{source}: the networks take {n_in} inputs, but these AEV settings give {columns.numel()}")
        state = pot.model.state_dict()
        for s_ours, z in enumerate(ours):
            layers = nets[symbols[numbers.index(z)]]
            for depth, (weight, bias) in enumerate(layers):
                if depth == 0:
                    weight = weight[:, columns]  # TorchANI's AEV layout -> nnp's
                prefix = f"networks.nets.{s_ours}.{2 * depth}."
                state[prefix + "weight"] = weight.to(state[prefix + "weight"].dtype)
                state[prefix + "bias"] = bias.to(state[prefix + "bias"].dtype)
        pot.model.load_state_dict(state)
        pot = pot.to(dtype)
        # reference energies and scale set in dtype (built in float32, -2000 eV would lose 1e-4 eV)
        pot.set_atomref(atomref)
        pot.energy_scale.fill_(hartree)
        potentials.append(pot)
    return potentials


def _aev_columns(aev, theirs: list[int], triu: torch.Tensor | None, n_species: int) -> torch.Tensor:
    """For each column of nnp's AEV, the column of TorchANI's that holds the same term.

    ``theirs[s]``: TorchANI's species index of nnp species ``s``. Radial blocks are
    per neighbor species; angular blocks per unordered species pair, numbered as
    ``triu[a, b]`` (TorchANI) and ``aev.species_pair_index[a, b]`` (nnp)."""
    if triu is None:
        triu = torch.zeros(n_species, n_species, dtype=torch.long)
        k = 0
        for a in range(n_species):
            for b in range(a, n_species):
                triu[a, b] = triu[b, a] = k
                k += 1
    n_radial = aev.radial_shifts.numel()
    block = aev.angular_radial_shifts.numel() * aev.angle_shifts.numel()
    radial_length = n_species * n_radial
    columns = [theirs[s] * n_radial + r for s in range(n_species) for r in range(n_radial)]
    pair_of = {int(aev.species_pair_index[a, b]): (a, b) for a in range(n_species) for b in range(a, n_species)}
    for p in range(len(pair_of)):
        a, b = pair_of[p]
        q = int(triu[theirs[a], theirs[b]])
        columns += [radial_length + q * block + c for c in range(block)]
    return torch.tensor(columns, dtype=torch.long)


def convert(
    path: str | Path,
    elements: Sequence[str] | None = None,
    activation: str = "celu",
    radial_cutoff: float | None = None,
    angular_cutoff: float | None = None,
    dtype: torch.dtype = torch.float32,
):
    """A TorchANI state file -> a :class:`~nnp.potential.Potential`, or a
    :class:`~nnp.committee.Committee` for an ensemble, in ``dtype``."""
    from nnp.committee import Committee
    from nnp.data.prepare.download import file_digests

    source = str(path)
    parsed = parse_state(read_state(path), source, elements)
    potentials = to_potentials(parsed, source, activation, radial_cutoff, angular_cutoff, dtype)
    record = {
        "format": "torchani",
        "path": str(Path(path).resolve()),
        "sha256": file_digests(Path(path))["sha256"],
        "elements": list(parsed.symbols),
        "members": len(potentials),
        "self_energies_hartree": None if parsed.self_energies is None else parsed.self_energies.double().tolist(),
    }
    for k, pot in enumerate(potentials):
        pot.metadata = {"imported": {**record, "member": k}}
    if len(potentials) == 1:
        return potentials[0]
    sources = [f"{source} (member {k})" for k in range(len(potentials))]
    return Committee(potentials, sources=sources, metadata={"imported": record})
