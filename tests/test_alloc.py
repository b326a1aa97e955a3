"""nnp.nn.alloc: malloc settings applied once, switchable off, harmless where not glibc."""

import platform
import sys

from nnp.nn import alloc


def test_applied_once_on_glibc(monkeypatch):
    monkeypatch.setattr(alloc, "_done", [])
    monkeypatch.delenv("NNP_MALLOC_TUNE", raising=False)
    applied = alloc.keep_freed_memory()
    assert alloc.keep_freed_memory() == applied
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert applied


def test_switched_off_by_environment(monkeypatch):
    monkeypatch.setattr(alloc, "_done", [])
    monkeypatch.setenv("NNP_MALLOC_TUNE", "0")
    assert not alloc.keep_freed_memory()
