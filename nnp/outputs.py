"""One rule for every file nnp writes.

Finished files (``predict`` output, ``evaluate`` JSON and plots, ``export``
files, converted datasets, ``model.pt``, the ``md`` summary) are written
through :func:`atomic_path`: to a temporary file in the same folder, renamed
onto the final name only once complete. A failure or a kill never leaves a
half-written file under the final name, and an existing file stays as it was
until the new one is complete. Streams (the ``md`` trajectory and CSV log) are
appended and flushed at each write instead.

Before any work starts, a command calls :func:`check_writable` on each output:
an existing file is refused unless ``overwrite=true``, and a folder that cannot
be written (read-only, permission denied) is refused with one line.

Disk errors while writing (no space left, quota, file-size limit, read-only
file system, permission denied) become one :class:`~nnp.errors.NNPError`
naming the file.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from nnp.errors import NNPError

#: errno -> the words of the one-line error.
WRITE_ERRORS: dict[int, str] = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EFBIG: "file too large for this file system or ulimit -f",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EIO: "input/output error on the device",
    errno.ENAMETOOLONG: "file name too long",
}

_COMPRESSED = (".gz", ".bz2", ".xz", ".zst")


def write_error_reason(err: BaseException) -> str | None:
    """The words for a disk/permission error, or None when ``err`` is not one.

    Uses ``err.errno``, or the ``errno = N`` that HDF5 puts in its messages.
    """
    code = getattr(err, "errno", None)
    if code is None:
        match = re.search(r"errno = (\d+)", str(err))
        code = int(match.group(1)) if match else None
    return WRITE_ERRORS.get(code) if code is not None else None


def _existing_ancestor(folder: Path) -> Path:
    folder = Path(os.path.abspath(folder))
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _folder_error(folder: Path) -> str:
    try:
        if os.statvfs(folder).f_flag & os.ST_RDONLY:
            return "read-only file system"
    except OSError:
        pass
    return "permission denied"


def check_writable(path: str | os.PathLike, overwrite: bool = False, what: str = "output") -> Path:
    """Refuse, before any work, an output that could not or should not be written.

    - an existing file, unless ``overwrite``: ``FILE already exists: choose
      another WHAT, or overwrite=true`` (``what`` names the key to change);
    - a folder where a file is expected;
    - a folder that cannot be created or written: ``FOLDER: cannot write here
      (read-only file system | permission denied)``.

    Writes nothing (missing folders are created later, by :func:`atomic_path`).
    Returns ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    if path.is_dir():
        raise NNPError(f"{path} is a folder: give a file name for the {what}")
    if path.exists() and not overwrite:
        raise NNPError(f"{path} already exists: choose another {what}, or overwrite=true")
    folder = path.parent
    base = _existing_ancestor(folder)
    if not base.is_dir():
        raise NNPError(f"{folder}: cannot create this folder ({base} is a file)")
    if not os.access(base, os.W_OK | os.X_OK):
        raise NNPError(f"{base}: cannot write here ({_folder_error(base)})")
    return path


def temp_name(path: Path) -> Path:
    """The temporary file for ``path``: hidden, in the same folder (so the rename is atomic),
    with the process id (concurrent writers do not share it) and the same extension (writers
    that pick the format from the name, ASE and matplotlib, still do)."""
    suffixes = path.suffixes
    keep = "".join(suffixes[-2:]) if len(suffixes) >= 2 and suffixes[-1] in _COMPRESSED else path.suffix
    stem = path.name[: len(path.name) - len(keep)] if keep else path.name
    return path.with_name(f".{stem}.{os.getpid()}.tmp{keep}")


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # gone already, or nothing more can be done; the final name is untouched either way


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it onto ``path``.

    On any failure (an exception, Ctrl-C) the temporary file is deleted and
    ``path`` is left as it was (absent, or the previous complete file). A disk
    error (:data:`WRITE_ERRORS`) becomes one NNPError naming ``path``; other
    errors propagate unchanged. The folder is created if needed.
    """
    path = Path(path)
    existed = path.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise _error(path, err, existed) from None
    tmp = temp_name(path)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"atomic_path: the writer did not create {tmp}")
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as err:
        _unlink(tmp)
        # OSError with an errno, or HDF5's RuntimeError/OSError text with "errno = 28"
        if isinstance(err, Exception) and not isinstance(err, NNPError) and write_error_reason(err) is not None:
            raise _error(path, err, existed) from None
        raise


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], object]) -> Path:
    """``writer(tmp)`` writes the whole file to ``tmp``; then ``tmp`` is renamed onto ``path``."""
    with atomic_path(path) as tmp:
        writer(tmp)
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes | bytearray | memoryview) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
    return Path(path)


@contextmanager
def hdf5_writer(tmp: str | os.PathLike) -> Iterator[object]:
    """A new HDF5 file (``h5py.File``) at ``tmp``, written through a Python file object.

    HDF5's own file driver does not survive a failed write: after ENOSPC or
    EFBIG it prints "Exception ignored" tracebacks while closing and can crash
    the interpreter (segmentation fault). Through a Python file object the
    failure is a plain OSError, which :func:`atomic_path` reports in one line.
    Speed is the same for large datasets.
    """
    import h5py

    with open(tmp, "w+b") as fh, h5py.File(fh, "w") as f:
        yield f


def _fsync(path: Path) -> None:
    """Data on disk before the rename: after a crash, the final name holds the old or the new file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.EROFS, errno.EBADF):  # no fsync here: nothing to gain
            raise
    finally:
        os.close(fd)


def _error(path: Path, err: BaseException, existed: bool) -> NNPError:
    reason = write_error_reason(err) or (getattr(err, "strerror", None) or str(err)).lower()
    kept = "; the existing file is unchanged" if existed and path.exists() else "; nothing was written"
    return NNPError(f"{path}: cannot write ({reason}){kept}")


__all__ = [
    "WRITE_ERRORS", "atomic_path", "atomic_write", "check_writable", "hdf5_writer", "temp_name", "write_bytes",
    "write_error_reason",
]


def save_figure(fig, path: str | os.PathLike, dpi: int = 100, title: str = "") -> Path:
    """Write matplotlib figure ``fig`` to ``path`` as a PNG, atomically (:func:`atomic_path`),
    with ``title`` above its panels; the figure is closed either way."""
    import matplotlib.pyplot as plt

    try:
        if title:
            fig.suptitle(title)
        fig.tight_layout()
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)
