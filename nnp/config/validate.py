"""Check a composed config against the schema: types, ranges, then relations.

:func:`check_config` is called with the config Hydra composed (overrides,
the user's ``--config-dir`` files, sweeps) before a command does any work.
The first problem raises :class:`ConfigError`, one line::

    config error: trainer.max_epochs=-3: a whole number >= 1, or -1 (no limit)

Per-key rules come from the declarations in :mod:`nnp.config.schema`; the
relations between keys (split fractions summing to at most 1, a cutoff beyond
the smallest radial shift, ...) are the ``_relations_*`` functions below.
"""

from __future__ import annotations

import difflib
import math
import re
import types
from collections.abc import Iterable, Mapping
from dataclasses import fields, is_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

from nnp.config.commands import COMMANDS
from nnp.config.fields import Rule, key_of, rule_of
from nnp.config.stages import parse_stages
from nnp.errors import NNPError

MISSING = "???"  # Hydra/OmegaConf's "must be set"


class ConfigError(NNPError):
    """A config value the schema refuses (exit code 2, like every bad input)."""

    def __init__(self, text: str):
        super().__init__(f"config error: {text}")
        self.text = text  # without the prefix, for commands that name themselves instead


# ------------------------------------------------------------------ values


def show(value: Any) -> str:
    """A value as the user would type it on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value and not re.search(r"[\s,\[\]{}]", value) else repr(value)
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    return str(value)


def _is_int(v: Any) -> bool:
    # 1e4 in YAML is a float; a whole float is accepted where a count is asked
    return (isinstance(v, int) and not isinstance(v, bool)) or (isinstance(v, float) and v.is_integer())


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def union_args(tp: Any) -> tuple | None:
    return get_args(tp) if get_origin(tp) in (Union, types.UnionType) else None


def _range_ok(v: float, rule: Rule) -> bool:
    return not (
        (rule.ge is not None and v < rule.ge) or (rule.gt is not None and v <= rule.gt)
        or (rule.le is not None and v > rule.le) or (rule.lt is not None and v >= rule.lt)
    )


def _range_text(rule: Rule) -> str:
    low = f">= {rule.ge:g}" if rule.ge is not None else f"> {rule.gt:g}" if rule.gt is not None else ""
    high = f"<= {rule.le:g}" if rule.le is not None else f"< {rule.lt:g}" if rule.lt is not None else ""
    if low and high:
        lo_b = "[" if rule.ge is not None else "("
        hi_b = "]" if rule.le is not None else ")"
        return f" in {lo_b}{(rule.ge if rule.ge is not None else rule.gt):g}, {(rule.le if rule.le is not None else rule.lt):g}{hi_b}"
    return f" {low or high}" if low or high else ""


def _norm(name: Any, rule: Rule) -> str:
    return str(name).strip().lower() if rule.ignore_case else str(name)


def _in_choices(v: Any, rule: Rule) -> bool:
    names = rule.names()
    return _norm(v, rule) in {_norm(n, rule) for n in names}


def describe(tp: Any, rule: Rule, plural: bool = False) -> str:
    """What a declaration allows, in words: "a whole number >= 1, or null"."""
    if rule.allowed:
        return rule.allowed
    args = union_args(tp)
    nullable = args is not None and type(None) in args
    if args is not None:
        rest = [a for a in args if a is not type(None)]
        tp = rest[0] if len(rest) == 1 else Any
    origin = get_origin(tp)
    if rule.choices is not None:
        text = "one of " + ", ".join(rule.names())
    elif tp is bool:
        text = "true or false"
    elif tp is int:
        text = ("whole numbers" if plural else "a whole number") + _range_text(rule)
    elif tp is float:
        text = ("numbers" if plural else "a number") + _range_text(rule)
    elif tp is str:
        text = "text" if plural else "a text value"
        if rule.pattern:
            text += f" matching {rule.pattern}"
    elif origin is list:
        (item_tp,) = get_args(tp) or (Any,)
        text = ("lists" if plural else "a list") + " of " + describe(item_tp, rule.item or Rule(), plural=True)
        if rule.min_items:
            text += f" (at least {rule.min_items})"
    elif origin is dict:
        _, value_tp = get_args(tp)
        text = "a mapping to " + describe(value_tp, rule.item or Rule(), plural=True)
    elif is_dataclass(tp):
        text = "a group of settings (" + ", ".join(key_of(f) for f in fields(tp)) + ")"
    else:
        text = "a value"
    if rule.also:
        text += ", or " + " or ".join(show(a) for a in rule.also)
    if nullable:
        text += ", or null"
    if rule.hint and not plural:
        text += f" ({rule.hint})"
    return text


def conforms(v: Any, tp: Any, rule: Rule) -> bool:
    """Does ``v`` have type ``tp`` and satisfy ``rule`` (items included)?"""
    if v in rule.also and not isinstance(v, bool):
        return True
    if rule.check is not None:
        return bool(rule.check(v))
    args = union_args(tp)
    if args is not None:
        if v is None:
            return type(None) in args
        return any(conforms(v, a, rule) for a in args if a is not type(None))
    if tp is Any:
        return True
    if v is None:
        return False
    origin = get_origin(tp)
    if tp is bool:
        return isinstance(v, bool)
    if tp is int:
        return _is_int(v) and _range_ok(v, rule)
    if tp is float:
        return _is_number(v) and _range_ok(v, rule)
    if tp is str:
        # numbers are fine as names (output=1 is the file "1"); booleans and lists are not
        if isinstance(v, bool) or not isinstance(v, (str, int, float)) or v == "":
            return False
        if rule.choices is not None and not _in_choices(v, rule):
            return False
        return rule.pattern is None or re.fullmatch(rule.pattern, str(v)) is not None
    if origin is list:
        (item_tp,) = get_args(tp) or (Any,)
        return (isinstance(v, list) and len(v) >= rule.min_items
                and all(conforms(x, item_tp, rule.item or Rule()) for x in v))
    if origin is dict:
        _, value_tp = get_args(tp)
        return isinstance(v, Mapping) and all(conforms(x, value_tp, rule.item or Rule()) for x in v.values())
    if is_dataclass(tp):
        return isinstance(v, Mapping)
    raise TypeError(f"schema type {tp!r} is not supported")  # a bug in the schema, not user input


# ----------------------------------------------------------------- checker


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _is_added(key: str, added: Iterable[str]) -> bool:
    return any(key == a or key.startswith(a + ".") for a in added)


def unknown_key_text(key: str, known: Iterable[str]) -> str:
    """"'model.hiden' is not a config key (did you mean 'model.hidden'? ...)"."""
    leaf = key.rsplit(".", 1)[-1]
    close = difflib.get_close_matches(leaf, [str(k) for k in known], n=1)
    parent = key.rsplit(".", 1)[0] + "." if "." in key else ""
    hint = f"did you mean '{parent}{close[0]}'? " if close else "a typo? "
    return f"'{key}' is not a config key ({hint}use '+{key}=...' to add a new key)"


def check_group(value: Any, cls: type, path: str, added: Iterable[str] = ()) -> None:
    """Check a mapping against a schema class (recursively)."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}={show(value)}: {describe(cls, Rule())}")
    variants = getattr(cls, "variants", None)
    if variants:
        key = cls.variant_key
        name = value.get(key)
        if not isinstance(name, str) or name not in variants:
            raise ConfigError(f"{_join(path, key)}={show(name)}: one of {', '.join(sorted(variants))}")
        cls = variants[name]
    hints = get_type_hints(cls)
    declared = {key_of(f): f for f in fields(cls)}
    for key, v in value.items():
        full = _join(path, key)
        if key not in declared:
            mode = getattr(cls, "extra_keys", "error")
            if mode == "never":
                raise ConfigError(f"{full}={show(v)}: not a setting of {path} {value.get('name', '')!r} "
                                  f"(settings: {', '.join(sorted(declared))})")
            if mode == "error" and not _is_added(full, added):
                raise ConfigError(unknown_key_text(full, declared))
            continue
        check_value(v, hints[declared[key].name], rule_of(declared[key]), full, added)
    for key, f in declared.items():
        if rule_of(f).required and key not in value:
            raise ConfigError(f"{_join(path, key)} is not set: e.g. {rule_of(f).required}")


def check_value(v: Any, tp: Any, rule: Rule, key: str, added: Iterable[str] = ()) -> None:
    """Check one value; nested groups recurse into :func:`check_group`."""
    if v == MISSING:
        example = f": e.g. {rule.required}" if rule.required else f": {describe(tp, rule)}"
        raise ConfigError(f"{key} is not set{example}")
    if isinstance(v, str) and "${" in v:
        return  # an interpolation only Hydra's running app can resolve: checked when it is
    args = union_args(tp)
    inner = [a for a in args if a is not type(None)] if args else [tp]
    group_cls = next((a for a in inner if is_dataclass(a)), None)
    if group_cls is not None:
        if v is None and args is not None and type(None) in args:
            return
        check_group(v, group_cls, key, added)
        return
    if not conforms(v, tp, rule):
        mapping = next((a for a in inner if get_origin(a) is dict), None)
        if mapping is not None and isinstance(v, Mapping):  # name the entry: model.hidden_per_element.H=[8,0]
            value_tp, item_rule = get_args(mapping)[1], rule.item or Rule()
            for k, x in v.items():
                if not conforms(x, value_tp, item_rule):
                    raise ConfigError(f"{key}.{k}={show(x)}: {describe(value_tp, item_rule)}")
        raise ConfigError(f"{key}={show(v)}: {describe(tp, rule)}")


# --------------------------------------------------------------- relations


def _relations_split(data: Mapping[str, Any], command: str) -> None:
    split = data.get("split") or {}
    parts = {p: split.get(p) for p in ("train", "val", "test")}
    fractions = {p: v for p, v in parts.items() if isinstance(v, float)}
    if sum(fractions.values()) > 1.0 + 1e-9:
        raise ConfigError(f"data.split={show(parts)}: fractions that sum to at most 1 (these sum to {sum(fractions.values()):g})")
    if command == "train" and not data.get("split_file") and split.get("val") in (0, 0.0, None):
        raise ConfigError(f"data.split.val={show(split.get('val'))}: more than 0 (the validation split drives "
                          "checkpoints and early stopping)")


def _relations_loss(loss: Mapping[str, Any]) -> None:
    weights = {k: loss.get(k, 0.0) for k in ("energy_weight", "forces_weight")}
    if not any(w > 0 for w in weights.values()):
        raise ConfigError(f"loss.energy_weight={show(weights['energy_weight'])}, loss.forces_weight="
                          f"{show(weights['forces_weight'])}: at least one weight must be > 0")
    try:
        parse_stages(loss.get("stages"))
    except NNPError as err:
        raise ConfigError(str(err)) from None


def _smallest_shift(shifts: list[float] | None) -> float:
    # nnp.models.ani: null shifts start at 0.9 Å and run up to the cutoff
    return min(shifts) if shifts else 0.9


def _relations_model(model: Mapping[str, Any]) -> None:
    name = model.get("name")
    if name == "ani":
        for cutoff_key, shifts_key in (("radial_cutoff", "radial_shifts"), ("angular_cutoff", "angular_radial_shifts")):
            cutoff = model.get(cutoff_key, 5.2 if cutoff_key == "radial_cutoff" else 3.5)
            smallest = _smallest_shift(model.get(shifts_key))
            if cutoff <= smallest:
                raise ConfigError(f"model.{cutoff_key}={show(cutoff)}: larger than the smallest shift "
                                  f"({smallest:g} Å, model.{shifts_key})")
        per_element = model.get("hidden_per_element") or {}
        if per_element:
            from ase.data import chemical_symbols  # only when the mapping is used

            for symbol in per_element:
                if symbol not in chemical_symbols[1:]:
                    raise ConfigError(f"model.hidden_per_element.{symbol}: not an element symbol (H, C, N, O, ...)")
    elif name == "hipnn":
        lo, hi, rc = model.get("soft_min", 0.75), model.get("soft_max", 5.5), model.get("cutoff", 6.5)
        if not lo < hi <= rc:
            raise ConfigError(f"model.soft_max={show(hi)}: larger than model.soft_min ({lo:g}) and at most "
                              f"model.cutoff ({rc:g})")


def _relations(command: str, cfg: Mapping[str, Any]) -> None:
    if isinstance(cfg.get("data"), Mapping):
        _relations_split(cfg["data"], command)
    if isinstance(cfg.get("loss"), Mapping):
        _relations_loss(cfg["loss"])
    if isinstance(cfg.get("model"), Mapping):
        _relations_model(cfg["model"])
    if command == "evaluate" and cfg.get("calibrate") and isinstance(cfg.get("ckpt"), list):
        raise ConfigError(f"calibrate=true: needs ckpt to be one (committee) file, not a list (ckpt={show(cfg['ckpt'])})")


# -------------------------------------------------------------------- entry


def check_config(command: str, cfg: Mapping[str, Any], added: Iterable[str] = ()) -> None:
    """Check the plain (resolved) config of ``command``; ``added``: keys given with ``+key=``."""
    cls = COMMANDS[command]
    added = list(added)
    plain = {k: v for k, v in cfg.items() if k != "hydra"}
    for f in fields(cls):
        # a group the command needs, left out of the defaults (data=null in train)
        if f.name not in plain or plain[f.name] is not None or not is_dataclass(get_type_hints(cls)[f.name]):
            continue
        choices = ", ".join(sorted(getattr(get_type_hints(cls)[f.name], "variants", {}))) or "a config of conf/" + f.name
        raise ConfigError(f"{f.name}=null: {command} needs a {f.name} config ({choices})")
    check_group(plain, cls, "", added)
    _relations(command, plain)
