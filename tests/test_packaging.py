"""A non-editable install must still find the configs and the demo data."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.mark.slow
def test_wheel_ships_configs_and_demo_data(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    wheel = next(tmp_path.glob("nnp-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in REPO.glob("conf/**/*.yaml"):
        assert "nnp/conf/" + str(shipped.relative_to(REPO / "conf")) in names, shipped
    assert "nnp/datasets/chno-mini.h5" in names
    assert "nnp/scripts/ddp_train.py" in names
    assert "nnp/models/aev_kernel.c" in names  # compiled at first use (nnp/models/aev_native.py)
