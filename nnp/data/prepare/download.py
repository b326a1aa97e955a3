"""Downloads of the official data files, checked against published checksums.

A download goes to ``<name>.part`` and is renamed only once its size and
checksum match, so a file with the final name is complete. Files already
present are re-verified instead of downloaded again. Where no checksum is
published, the SHA-256 is computed and printed, so the user can record it.
"""

from __future__ import annotations

import hashlib
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from nnp.data.progress import console, progress
from nnp.errors import NNPError

_BLOCK = 1 << 20


@dataclass(frozen=True)
class Remote:
    """One published file: where it lives and what it must hash to."""

    url: str
    filename: str
    size: int | None = None
    md5: str | None = None  # as published by the host (figshare lists MD5s)
    sha256: str | None = None


def file_digests(path: Path, label: str | None = None) -> dict[str, str]:
    """MD5 and SHA-256 of a file, read in 1 MiB blocks (with a progress bar on a terminal)."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = path.stat().st_size
    with progress("bytes") as bar, open(path, "rb") as f:
        task = bar.add_task(label or f"checksum {path.name}", total=size)
        while block := f.read(_BLOCK):
            md5.update(block)
            sha.update(block)
            bar.advance(task, len(block))
    return {"md5": md5.hexdigest(), "sha256": sha.hexdigest()}


def verify(path: Path, remote: Remote, digests: dict[str, str] | None = None) -> dict[str, str]:
    """Digests of ``path``; NNPError when its size or a published checksum differs."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        raise NNPError(f"{path}: {size} bytes, the published {remote.filename} has {remote.size} (incomplete or a different file)")
    digests = digests or file_digests(path)
    for algo in ("md5", "sha256"):
        expected = getattr(remote, algo)
        if expected and digests[algo] != expected:
            raise NNPError(f"{path}: {algo} {digests[algo]} does not match the published {expected} (corrupt download?)")
    return digests


def check_local(path: Path, remote: Remote) -> dict[str, str]:
    """Digests of a user-supplied file; a file the size of the official one must match its checksum.

    Files of another size (a subset, a newer release) are accepted with a note
    and their SHA-256 printed.
    """
    if not path.is_file():
        raise NNPError(f"{path}: file not found")
    if remote.size is not None and path.stat().st_size == remote.size:
        return verify(path, remote)
    digests = file_digests(path)
    console.print(f"note: {path.name} is not the published {remote.filename} (size differs); sha256 {digests['sha256']}")
    return digests


def fetch(remote: Remote, directory: Path, url: str | None = None) -> tuple[Path, dict[str, str]]:
    """Download ``remote`` into ``directory`` (or reuse a verified copy); returns (path, digests).

    ``url`` overrides ``remote.url`` (a mirror, or ``file://`` in tests).
    """
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / remote.filename
    if dest.is_file():
        console.print(f"using {dest} (already downloaded; verifying)")
        return dest, verify(dest, remote)
    part = dest.with_name(dest.name + ".part")
    source = url or remote.url
    console.print(f"downloading {source} -> {dest}")
    md5, sha = hashlib.md5(), hashlib.sha256()
    request = urllib.request.Request(source, headers={"User-Agent": "nnp-data-prepare"})
    try:
        with urllib.request.urlopen(request, timeout=60) as response, open(part, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or remote.size
            with progress("bytes") as bar:
                task = bar.add_task(remote.filename, total=total)
                while block := response.read(_BLOCK):
                    out.write(block)
                    md5.update(block)
                    sha.update(block)
                    bar.advance(task, len(block))
        digests = verify(part, remote, {"md5": md5.hexdigest(), "sha256": sha.hexdigest()})
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        part.unlink(missing_ok=True)
        reason = getattr(err, "reason", None) or err
        raise NNPError(f"cannot download {source} ({reason}); download {remote.filename} yourself and pass source=PATH") from None
    except NNPError:
        part.unlink(missing_ok=True)
        raise
    shutil.move(str(part), dest)
    if not (remote.md5 or remote.sha256):
        console.print(f"{remote.filename}: no published checksum; sha256 {digests['sha256']} (record it)")
    return dest, digests


def output_path(out: str, overwrite: bool) -> Path:
    """The converter's output file, checked before any download or conversion: refused if it
    exists (unless ``overwrite``) or if its folder cannot be written (:func:`nnp.outputs.check_writable`)."""
    from nnp.outputs import check_writable

    return check_writable(out, overwrite, what="out")
