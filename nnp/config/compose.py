"""From a command line to a checked config, before any work starts.

:func:`check_command_line` composes the config exactly as Hydra will (the
shipped configs, ``--config-dir`` folders, every override; for ``-m`` every
job of the sweep) and runs the schema checks on it. Hydra's own refusals
(an unknown key, a missing group option, an override it cannot parse) are
turned into one line from the attributes of its exceptions, not from their
text. :func:`check_job` runs the same checks inside the running Hydra app,
so every job of a sweep is checked again just before its task runs.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nnp.config.validate import ConfigError, check_config, unknown_key_text
from nnp.errors import NNPError

#: Above this many jobs, a sweep is checked one swept key at a time (the app checks each job anyway).
MAX_SWEEP_JOBS = 32


@dataclass
class CommandLine:
    """The parts of a Hydra command line that the checks need."""

    overrides: list[str] = field(default_factory=list)
    config_dirs: list[str] = field(default_factory=list)
    multirun: bool = False
    #: a Hydra flag that does not run a job (--help, --cfg job, --info, ...): nothing to check
    passthrough: bool = False


def split_command_line(argv: Sequence[str]) -> CommandLine:
    out, it = CommandLine(), iter(argv)
    for arg in it:
        if arg in ("--config-dir", "-cd"):
            out.config_dirs.append(next(it, ""))
        elif arg.startswith("--config-dir="):
            out.config_dirs.append(arg.split("=", 1)[1])
        elif arg in ("-m", "--multirun"):
            out.multirun = True
        elif arg.startswith("-"):
            out.passthrough = True
        else:
            out.overrides.append(arg)
    return out


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def parse_overrides(overrides: Sequence[str]) -> list[Any]:
    """Hydra's parse of each override; a syntax error is one line naming the override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed += parser.parse_overrides([text])
        except HydraException as err:  # OverrideParseException: the grammar's complaint + a link to the syntax
            raise ConfigError(f"cannot read {text!r}: {_one_line(str(err))}") from None
    return parsed


def added_keys(parsed: Iterable[Any]) -> list[str]:
    """Keys the user added with ``+key=`` / ``++key=`` (the schema accepts keys below them)."""
    return [o.key_or_group for o in parsed if o.is_add() or o.is_force_add()]


def _jobs(parsed: list[Any], multirun: bool) -> list[list[str]]:
    """The override lists of the jobs to check: one, or each job of a sweep."""
    from hydra.core.override_parser.types import ValueType

    if not multirun:
        return [[o.input_line for o in parsed]]
    options: list[list[str]] = []
    for o in parsed:
        if o.is_sweep_override() and o.is_discrete_sweep() and o.value_type != ValueType.GLOB_CHOICE_SWEEP:
            options.append([f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()])
        elif o.is_sweep_override():
            continue  # glob and interval sweeps: the app checks each job
        else:
            options.append([o.input_line])
    n_jobs = 1
    for values in options:
        n_jobs *= len(values)
    if n_jobs <= MAX_SWEEP_JOBS:
        return [list(job) for job in itertools.product(*options)]
    # Too many jobs to compose up front: vary one swept key at a time, the others at their first value.
    first = [values[0] for values in options]
    jobs = [first]
    for k, values in enumerate(options):
        jobs += [first[:k] + [v] + first[k + 1:] for v in values[1:]]
    return jobs


def _searchpath(config_dirs: Sequence[str]) -> list[str]:
    for d in config_dirs:
        if not Path(d).is_dir():
            raise NNPError(f"{d}: config folder not found")
    if not config_dirs:
        return []
    return ["hydra.searchpath=[" + ",".join(f"file://{Path(d).resolve()}" for d in config_dirs) + "]"]


def group_options(group: str) -> list[str]:
    """The yaml files of ``group`` in nnp's conf/ (Hydra leaves a multi-select group's options out: terms=[...])."""
    package = Path(__file__).resolve().parents[1]  # nnp/conf installed, conf/ in a checkout (as nnp.cli.config_dir)
    for folder in (package / "conf" / group, package.parent / "conf" / group):
        if folder.is_dir():
            return sorted(p.stem for p in folder.glob("*.yaml"))
    return []


def _explain(err: BaseException) -> str:
    """One line for an exception of Hydra's compose, from its attributes where it has them."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, name = err.missing_cfg_file.rsplit("/", 1)
        # err.options: the yaml files of that group in conf/ and in --config-dir folders
        options = ", ".join(sorted(err.options or group_options(group))) or f"none found in the {group}/ folders"
        hint = "; install it with pip install 'nnp[slurm]'" if group == "hydra/launcher" and name.startswith("submitit") else ""
        return f"{group}={name}: no such {group} config; one of {options}{hint}"
    cause = err.__cause__
    if isinstance(cause, (ConfigAttributeError, ConfigKeyError)) and cause.full_key:
        parent = cause.parent_node
        known = list(parent.keys()) if hasattr(parent, "keys") else []
        return unknown_key_text(cause.full_key, known)
    text = _one_line(str(err))
    if cause is not None:
        text += ": " + _one_line(str(getattr(cause, "msg", None) or cause).splitlines()[0])  # OmegaConf adds key lines
    return text


def compose(name: str, primary_dir: str | Path, overrides: Sequence[str], config_dirs: Sequence[str] = ()):
    """Hydra's composition of config ``name`` (with the hydra node), or ConfigError in one line."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(primary_dir), version_base=None, job_name=name):
            return hydra_compose(config_name=name, overrides=_searchpath(config_dirs) + list(overrides), return_hydra_config=True)
    except NNPError:
        raise
    except Exception as err:  # Hydra and OmegaConf raise many types; all are config errors here
        raise ConfigError(_explain(err)) from None
    finally:
        GlobalHydra.instance().clear()


def plain(cfg: Any) -> dict:
    """The config as plain Python values, without the ``hydra`` node; interpolations resolved.

    ``${hydra:...}`` resolves only inside Hydra's running app: such a value is
    kept as text (the checks skip it). Any other interpolation that fails is a
    config error naming its key.
    """
    from omegaconf import OmegaConf

    raw = OmegaConf.to_container(cfg, resolve=False, throw_on_missing=False)
    raw.pop("hydra", None)
    return _resolve(cfg, raw, "")  # each interpolation resolved in the whole config, as the task sees it


def _resolve(cfg: Any, node: Any, path: str) -> Any:
    from omegaconf import Container, OmegaConf

    if isinstance(node, dict):
        return {k: _resolve(cfg, v, f"{path}.{k}" if path else str(k)) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(cfg, v, f"{path}.{i}") for i, v in enumerate(node)]
    if not (isinstance(node, str) and "${" in node) or "${hydra:" in node:
        return node
    try:
        value = OmegaConf.select(cfg, path, throw_on_missing=False)
        return OmegaConf.to_container(value, resolve=True) if isinstance(value, Container) else value
    except Exception as err:  # an InterpolationResolutionError, often around an NNPError of a resolver
        raise ConfigError(f"{path}={node}: cannot resolve: {_root_cause(err)}") from None


def _root_cause(err: BaseException) -> str:
    """The innermost error's own words (OmegaConf chains its errors through __context__)."""
    seen = err
    while True:
        inner = seen.__cause__ or seen.__context__
        if inner is None or inner is seen:
            break
        seen = inner
    if isinstance(seen, NNPError):
        return _one_line(str(seen))
    return _one_line(str(getattr(err, "msg", None) or err).splitlines()[0])  # OmegaConf adds key lines below


def check_command_line(name: str, argv: Sequence[str], primary_dir: str | Path) -> list:
    """Compose and check every job ``argv`` describes; ConfigError (one line) on the first problem.

    Returns the composed configs (with the ``hydra`` node; none for ``--help`` and the like).
    """
    line = split_command_line(argv)
    if line.passthrough:
        return []  # --help, --cfg job, ...: Hydra answers; a run is still checked by check_job
    parsed = parse_overrides(line.overrides)
    composed = []
    for job in _jobs(parsed, line.multirun):
        cfg = compose(name, primary_dir, job, line.config_dirs)
        check_config(name, plain(cfg), added_keys(parse_overrides(job)))
        composed.append(cfg)
    return composed


def check_job(name: str, cfg: Any) -> None:
    """Inside the Hydra app: check this job's config (sweeps, and anything the up-front check skipped)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        task_overrides = list(HydraConfig.get().overrides.task)
    except ValueError:  # no Hydra app around (a test calling a task directly)
        task_overrides = []
    check_config(name, plain(cfg), added_keys(parse_overrides(task_overrides)))


__all__ = ["CommandLine", "check_command_line", "check_job", "compose", "plain", "split_command_line"]
