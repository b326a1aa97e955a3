"""Virtual environments of the peer codes, created on demand under benchmarks/.venvs/.

Each peer gets its own venv so its pins never touch nnp's:

- ``torchani``: torch 2.13.0 (the local CPU wheel, same as nnp) + torchani 2.9.0.
- ``schnetpack``: schnetpack 2.1.1, the newest release for Python 3.11. Its
  ``sympy<=1.12`` pin makes pip resolve torch down to 2.4.1 (a multi-GB CUDA
  build from PyPI). We try that first, within a time budget; if it fails or
  times out, we try schnetpack without its pins on the torch 2.13.0 CPU wheel
  nnp uses. (That fallback installs but does not import: 2.1.1 uses
  ``torch.utils.data.dataloader.T_co``, gone in torch 2.13; the peer is then
  skipped with that message.) The result file records what ran.

A venv is ready when its stamp file exists; ``--rebuild-envs`` removes them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENVS = HERE / ".venvs"

TORCH = "torch==2.13.0"
TORCHANI = "torchani==2.9.0"
SCHNETPACK = "schnetpack==2.1.1"
# schnetpack's runtime needs, minus the sympy pin and the dev tools it lists
SCHNETPACK_DEPS = [
    "numpy>=2",
    "ase>=3.21",
    "h5py",
    "pyyaml",
    "hydra-core>=1.1",
    "pytorch-lightning>=2",
    "torchmetrics",
    "rich",
    "tqdm",
    "fasteners",
    "dirsync",
    "torch-ema",
    "matscipy>=1.1",
    "tensorboard",
    "tensorboardX",
    "hydra-colorlog",
]


def python_of(name: str) -> Path:
    return VENVS / name / "bin" / "python"


def _stamp(name: str) -> Path:
    return VENVS / name / ".bench-ready"


def info(name: str) -> dict | None:
    """What was installed in a ready venv (None when not ready)."""
    stamp = _stamp(name)
    if not stamp.is_file():
        return None
    return json.loads(stamp.read_text())


def _run(cmd: list[str], log, timeout: float) -> bool:
    log(f"$ {' '.join(str(c) for c in cmd)}")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  timed out after {timeout:.0f} s")
        return False
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        log("  failed:\n    " + "\n    ".join(tail))
        return False
    return True


def _versions(name: str) -> dict:
    code = (
        "import json, importlib.metadata as m\n"
        "out = {}\n"
        "for p in ('torch', 'torchani', 'schnetpack', 'numpy', 'ase'):\n"
        "    try: out[p] = m.version(p)\n"
        "    except m.PackageNotFoundError: pass\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run([str(python_of(name)), "-c", code], capture_output=True, text=True)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def _fresh_venv(name: str, log) -> list[str]:
    path = VENVS / name
    if path.exists():
        shutil.rmtree(path)
    VENVS.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    pip = [str(python_of(name)), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    _run(pip + ["--upgrade", "pip"], log, 300)
    return pip


def imports(name: str, module: str, log) -> bool:
    """Whether ``module`` imports in venv ``name`` (an install can succeed and still not work)."""
    proc = subprocess.run([str(python_of(name)), "-c", f"import {module}"], capture_output=True, text=True)
    if proc.returncode != 0:
        log(f"  import {module} fails: {(proc.stderr.strip().splitlines() or ['?'])[-1]}")
    return proc.returncode == 0


def _finish(name: str, how: str, t0: float) -> dict:
    meta = {"how": how, "versions": _versions(name), "install_s": round(time.time() - t0, 1)}
    _stamp(name).write_text(json.dumps(meta))
    return meta


def ensure_torchani(log, timeout: float = 1800) -> dict | None:
    if info("torchani"):
        return info("torchani")
    t0 = time.time()
    log("[setup] creating benchmarks/.venvs/torchani (torch 2.13.0 CPU + torchani 2.9.0)")
    pip = _fresh_venv("torchani", log)
    if not _run(pip + [TORCH, TORCHANI], log, timeout):
        log("[setup] torchani could not be installed: skipping that peer")
        return None
    return _finish("torchani", "pip install torch==2.13.0 torchani==2.9.0", t0)


def ensure_schnetpack(log, timeout: float = 2400, allow_resolved: bool = True) -> dict | None:
    if info("schnetpack"):
        return info("schnetpack")
    t0 = time.time()
    if allow_resolved:
        log(
            "[setup] creating benchmarks/.venvs/schnetpack: pip install schnetpack==2.1.1 "
            f"(resolves to torch 2.4.1 from PyPI, a large download; budget {timeout:.0f} s)"
        )
        pip = _fresh_venv("schnetpack", log)
        if _run(pip + [SCHNETPACK], log, timeout) and imports("schnetpack", "schnetpack", log):
            return _finish("schnetpack", "pip install schnetpack==2.1.1 (pip-resolved torch)", t0)
        log("[setup] the pip-resolved install did not finish; falling back to torch 2.13.0 CPU")
    pip = _fresh_venv("schnetpack", log)
    ok = _run(pip + [TORCH] + SCHNETPACK_DEPS, log, timeout) and _run(
        pip + ["--no-deps", SCHNETPACK], log, 600
    )
    if not (ok and imports("schnetpack", "schnetpack", log)):
        log("[setup] schnetpack could not be installed in a working state: skipping that peer "
            "(2.1.1 needs torch < 2.5: on torch 2.13 it fails to import torch.utils.data's T_co)")
        return None
    return _finish("schnetpack", "schnetpack==2.1.1 --no-deps on torch==2.13.0 CPU (sympy pin ignored)", t0)


ENSURE = {"torchani": ensure_torchani, "schnetpack": ensure_schnetpack}

if __name__ == "__main__":  # python benchmarks/envs.py [torchani|schnetpack]
    targets = sys.argv[1:] or list(ENSURE)
    for target in targets:
        print(target, ENSURE[target](print))
