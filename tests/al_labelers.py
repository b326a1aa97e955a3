"""ASE calculators for the active-learning tests: EMT that counts its labels in a file, fails or is interrupted.

Imported by path (``labeler.calculator=al_labelers:CountingEMT``): the tests folder is on sys.path under pytest.
"""

from __future__ import annotations

from pathlib import Path

from ase.calculators.emt import EMT


class CountingEMT(EMT):
    """EMT that appends one line to ``count_file`` per finished label; the ``fail_at``-th call
    (1-based) raises RuntimeError, the ``interrupt_at``-th raises KeyboardInterrupt (a kill), the
    ``die_at``-th ends the process (a crashed or killed Slurm task); each call takes ``sleep_s`` more."""

    def __init__(self, count_file: str, fail_at: int | None = None, interrupt_at: int | None = None,
                 die_at: int | None = None, sleep_s: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.count_file = Path(count_file)
        self.fail_at, self.interrupt_at, self.die_at, self.sleep_s = fail_at, interrupt_at, die_at, sleep_s
        self.calls = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        self.calls += 1
        if self.sleep_s:
            import time

            time.sleep(self.sleep_s)
        if self.calls == self.die_at:
            import os

            os._exit(3)
        if self.calls == self.interrupt_at:
            raise KeyboardInterrupt
        if self.calls == self.fail_at:
            raise RuntimeError("SCF did not converge (test)")
        super().calculate(atoms, properties, system_changes)
        with open(self.count_file, "a") as fh:
            fh.write("label\n")


def count(path) -> int:
    path = Path(path)
    return len(path.read_text().splitlines()) if path.exists() else 0


class DyingEMT(EMT):
    """A labeler whose process dies (as a crash in a native library would)."""

    def calculate(self, atoms=None, properties=("energy",), system_changes=("positions",)):
        import os

        os._exit(1)
