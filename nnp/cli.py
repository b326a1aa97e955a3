"""The ``nnp`` command: thin dispatch to subcommands.

Config-driven subcommands (train, evaluate, predict, md) are Hydra apps:
``nnp train model=ani trainer.max_epochs=10``. The config is composed once up
front and checked against the schema (:mod:`nnp.config`), so that a typo or a
value out of range gives one clear line instead of a traceback; then Hydra
runs the job (run directories, multirun ``-m``, launchers), and each job is
checked again before its task runs.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from nnp.errors import NNPError

console = Console(stderr=True, highlight=False)

#: Hydra subcommands: name -> "module:function" taking the composed DictConfig.
HYDRA_COMMANDS: dict[str, str] = {
    "train": "nnp.train:run",
    "evaluate": "nnp.evaluate:run",
    "predict": "nnp.predict:run",
    "md": "nnp.md:run",
    "relax": "nnp.relax:run",
    "active-learn": "nnp.active_learn:run",
}
#: Plain subcommands: name -> "module:function" taking argv (list[str]) and returning an exit code.
PLAIN_COMMANDS: dict[str, str] = {
    "export": "nnp.export:main",
    "data": "nnp.data.cli:main",
    "ensemble": "nnp.ensemble:main",
    "lammps": "nnp.lammps:main",
    "import": "nnp.importer:main",
}

HELP = {
    "train": "train a potential on a dataset (writes a run directory with model.pt)",
    "evaluate": "error report of a model on a dataset (table, JSON, parity plot)",
    "predict": "energies and forces for every structure of a file",
    "md": "molecular dynamics with a model (ASE integrators)",
    "relax": "minimise energy (and cell) of every structure of a file (ASE optimizers)",
    "export": "compile a model to TorchScript (neighbor list and forces included) for use outside Python",
    "ensemble": "combine separately trained models into one committee file (nnp ensemble combine A.pt B.pt output=C.pt)",
    "lammps": "run a LAMMPS input script with a model as the interaction (fix external; nnp[lammps])",
    "import": "convert another code's model to an nnp model file (nnp import torchani ani2x_state.pt output=ani2x.pt)",
    "active-learn": "train a committee, run MD with it, label where it disagrees, repeat (labeler=xtb|ase)",
    "data": "prepare QM9 / ANI-1x (download, verify, convert) and inspect data files (nnp data info FILE)",
}


def config_dir() -> Path:
    """The shipped Hydra configs: ``nnp/conf`` when installed, ``conf/`` in a checkout."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "conf", here.parent / "conf"):
        if (candidate / "train.yaml").is_file():
            return candidate
    raise NNPError("cannot find nnp's config folder (conf/); is the package installed correctly?")


def shipped_dataset(name: str) -> str:
    """Path of a small dataset shipped with nnp (``datasets/`` in a checkout, ``nnp/datasets`` installed)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "datasets" / name, here.parent / "datasets" / name):
        if candidate.is_file():
            return str(candidate)
    raise NNPError(f"shipped dataset {name!r} not found (looked in nnp/datasets and datasets/)")


def register_resolvers() -> None:
    """OmegaConf resolvers the shipped configs use (idempotent)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("nnp_dataset"):
        OmegaConf.register_new_resolver("nnp_dataset", shipped_dataset)
    if not OmegaConf.has_resolver("nnp_run_dir"):
        from nnp.config.rundir import run_name_resolver

        OmegaConf.register_new_resolver("nnp_run_dir", run_name_resolver)


def _load(target: str) -> Callable:
    import importlib

    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def validate_overrides(name: str, argv: list[str]) -> None:
    """Compose the config with the user's overrides (each job of a ``-m`` sweep) and
    check it against the schema (:mod:`nnp.config`); raise NNPError, one line, on any problem."""
    from nnp.config.compose import check_command_line

    register_resolvers()
    composed = check_command_line(name, argv, config_dir())
    if name in ("train", "active_learn") and os.environ.get("LOCAL_RANK", "0") == "0":
        from nnp.config.compose import split_command_line

        key = "hydra.sweep.dir" if split_command_line(argv).multirun else "hydra.run.dir"
        for cfg in composed:
            check_run_dir(cfg, key)


def check_run_dir(cfg, key: str = "hydra.run.dir") -> None:
    """Refuse a run directory that cannot be created or written, before Hydra creates it
    (Hydra's own failure is a multi-line error): ``FOLDER: cannot write here (...)``."""
    from omegaconf import OmegaConf

    from nnp.outputs import check_writable

    try:
        run_dir = OmegaConf.select(cfg, key, throw_on_resolution_failure=True)
        model_file = Path(str(cfg.get("model_file") or "model.pt")).name
    except Exception:  # an interpolation only Hydra's app resolves: Hydra checks this one
        return
    if run_dir is None:
        return
    # overwrite=True: an existing model file is refused by nnp.train (which knows overwrite/resume).
    check_writable(Path(str(run_dir)) / model_file, overwrite=True, what="model_file")


def _quiet_libraries() -> None:
    """Library chatter a user need not see: matplotlib logs "generated new fontManager"
    (INFO, shown under Hydra's job logging) and "building the font cache" once per machine,
    when a library imports it (Lightning does, before nnp can set anything else)."""
    import logging

    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)


def _run_hydra(name: str, argv: list[str]) -> int:
    import hydra
    from omegaconf import DictConfig

    name = name.replace("-", "_")  # active-learn: its config is conf/active_learn.yaml
    validate_overrides(name, argv)
    _quiet_libraries()
    register_resolvers()

    @hydra.main(version_base=None, config_path=str(config_dir()), config_name=name)
    def app(cfg: DictConfig) -> None:
        # only a module-level function inside: launchers that pickle the task (submitit) take it by name
        run_task(name, cfg)

    # Hydra reads its overrides from sys.argv. For train, argv[0] is a real script
    # that Lightning can re-launch for the other ranks of a multi-device run.
    entry = Path(__file__).resolve().parent / "scripts" / "ddp_train.py"
    sys.argv = [str(entry) if name == "train" else f"nnp {name}"] + argv
    app()
    return 0


def run_task(name: str, cfg) -> None:
    """One Hydra job of command ``name``: check its config, run it; an NNPError -> one line and its exit code.
    (Also the entry point of a job that a launcher such as submitit runs in another process.)"""
    from nnp.config.compose import check_job

    register_resolvers()
    try:
        if os.environ.get("LOCAL_RANK", "0") == "0":  # other DDP ranks rerun the config rank 0 checked
            check_job(name, cfg)  # each job of a sweep, just before its task
        _load(HYDRA_COMMANDS.get(name) or HYDRA_COMMANDS[name.replace("_", "-")])(cfg)
    except NNPError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        sys.exit(err.exit_code)


def usage() -> str:
    lines = ["usage: nnp <command> [key=value ...]", "", "commands:"]
    for name in list(HYDRA_COMMANDS) + list(PLAIN_COMMANDS):
        lines.append(f"  {name:<10} {HELP.get(name, '')}")
    lines += [
        "",
        "Config-driven commands take Hydra overrides (key=value); see `nnp <command> --help`",
        "and `nnp <command> --cfg job` for the full config. Configs live in " + str(_safe_config_dir()),
    ]
    return "\n".join(lines)


def _safe_config_dir() -> str:
    try:
        return str(config_dir())
    except NNPError:
        return "(not found)"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from nnp import __version__

        print(f"nnp {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in HYDRA_COMMANDS and name not in PLAIN_COMMANDS and os.environ.get("LOCAL_RANK") and os.environ.get("NNP_RUN_DIR"):
        # Lightning re-launched `python -m nnp[.cli]` for another DDP rank, without the subcommand.
        name, rest = "train", argv
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    from nnp.nn.alloc import keep_freed_memory

    keep_freed_memory()  # every command: freed tensors stay in the heap between steps (nnp.nn.alloc)
    try:
        if name in HYDRA_COMMANDS:
            return _run_hydra(name, rest)
        if name in PLAIN_COMMANDS:
            return int(_load(PLAIN_COMMANDS[name])(rest) or 0)
        raise NNPError(f"unknown command {name!r}; commands: {', '.join(list(HYDRA_COMMANDS) + list(PLAIN_COMMANDS))}")
    except NNPError as err:
        console.print(f"[bold red]error:[/] {escape(str(err))}", soft_wrap=True)
        return err.exit_code
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/]")
        return 130


if __name__ == "__main__":
    # through the importable module, not this __main__ copy: launchers that pickle the Hydra task
    # (submitit) pickle functions of __main__ by value, with everything they reach (the console's locks)
    from nnp.cli import main as _main

    sys.exit(_main())
