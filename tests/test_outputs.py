"""One rule for every output (nnp/outputs.py).

Finished files are written to a temporary file beside them and renamed: a
failure or a kill leaves no half-written file under the final name and no
temporary file. An existing file is refused before any work unless
``overwrite=true``. An unwritable folder, a full disk and a read-only input
folder each give one clear line.

As root, file modes do not stop writes: the unwritable-folder tests then make
``os.access`` answer as the kernel would for a non-root user, and the full-disk
test uses a file-size limit (``RLIMIT_FSIZE``), which binds root too.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import ase.io
import pytest
import torch
from conftest import REPO, error_line, nnp_cli

from nnp import Potential
from nnp.errors import NNPError
from nnp.outputs import atomic_path, atomic_write, check_writable, temp_name

MOLECULES = REPO / "datasets" / "molecules.extxyz"
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


# ----------------------------------------------------------------------------- helpers
def listing(folder: Path) -> dict[str, tuple[int, int, bytes]]:
    """Every file under ``folder`` with its size, mtime and content: what "nothing written" compares."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes())
        for p in sorted(folder.rglob("*")) if p.is_file()
    }


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]


def make_readonly(folder: Path, monkeypatch) -> None:
    """chmod 0555; as root (modes do not bind it) ``os.access`` also says no for this folder."""
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    if IS_ROOT:
        real = os.access
        ro = os.path.abspath(folder)

        def access(path, mode, *args, **kw):
            if mode & os.W_OK and os.path.abspath(path).startswith(ro):
                return False
            return real(path, mode, *args, **kw)

        monkeypatch.setattr(os, "access", access)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    pot = Potential.build({"name": "ani", "hidden": [8], "hidden_per_element": None}, [1, 6, 7, 8],
                          atomref=[-13.6, -1029.0, -1485.0, -2042.0])
    path = tmp_path_factory.mktemp("model") / "model.pt"
    pot.save(path)
    return path


# ----------------------------------------------------------------------------- the module
def test_check_writable_refuses_existing_files_and_writes_nothing(tmp_path):
    out = tmp_path / "out.json"
    out.write_text("old")
    with pytest.raises(NNPError) as err:
        check_writable(out, overwrite=False)
    assert str(err.value) == f"{out} already exists: choose another output, or overwrite=true"
    assert check_writable(out, overwrite=True) == out
    with pytest.raises(NNPError, match="choose another out, or overwrite=true"):
        check_writable(out, what="out")
    with pytest.raises(NNPError, match="is a folder"):
        check_writable(tmp_path, overwrite=True)
    deep = tmp_path / "a" / "b" / "c.json"
    assert check_writable(deep) == deep and not (tmp_path / "a").exists()  # checked, not created
    (tmp_path / "file").write_text("x")
    with pytest.raises(NNPError, match="cannot create this folder"):
        check_writable(tmp_path / "file" / "sub" / "x.json")
    assert out.read_text() == "old"


@pytest.mark.parametrize("stop", [RuntimeError("writer bug"), KeyboardInterrupt()])
def test_a_writer_stopped_midway_leaves_the_old_file_and_no_temp(tmp_path, stop):
    out = tmp_path / "report.json"
    out.write_text("old complete file")

    def writer(tmp: Path):
        with open(tmp, "w") as fh:
            fh.write('{"half": ')
            fh.flush()
            raise stop

    with pytest.raises(type(stop)):
        atomic_write(out, writer)
    assert out.read_text() == "old complete file"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    with pytest.raises(type(stop)):  # no old file: none under the final name afterwards
        atomic_write(tmp_path / "new.json", writer)
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_atomic_path_renames_when_complete(tmp_path):
    out = tmp_path / "sub" / "predicted.xyz.gz"
    with atomic_path(out) as tmp:
        assert tmp.parent == out.parent and tmp.name.endswith(".tmp.xyz.gz") and tmp.name.startswith(".")
        tmp.write_bytes(b"data")
        assert not out.exists()
    assert out.read_bytes() == b"data" and no_temp_files(tmp_path)
    assert temp_name(Path("r.json")).suffix == ".json"


@pytest.mark.parametrize(
    "code, words",
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EDQUOT, "disk quota exceeded"),
        (errno.EFBIG, "file too large"),
        (errno.EROFS, "read-only file system"),
        (errno.EACCES, "permission denied"),
    ],
)
def test_disk_errors_are_one_line_naming_the_file(tmp_path, code, words):
    out = tmp_path / "model.pt"
    out.write_bytes(b"old model")

    def writer(tmp: Path):
        with open(tmp, "wb") as fh:
            fh.write(b"half a mod")
        raise OSError(code, os.strerror(code), str(tmp))

    with pytest.raises(NNPError) as err:
        atomic_write(out, writer)
    message = str(err.value)
    assert message.startswith(f"{out}: cannot write ({words}")
    assert "existing file is unchanged" in message and "\n" not in message
    assert out.read_bytes() == b"old model" and no_temp_files(tmp_path)


def test_hdf5_style_disk_error_is_recognised(tmp_path):
    def writer(tmp: Path):
        tmp.write_bytes(b"x")
        raise RuntimeError("Can't decrement id ref count (unable to extend file properly, errno = 28, "
                           "error message = 'No space left on device')")

    with pytest.raises(NNPError, match=r"data.h5: cannot write \(no space left on device\); nothing was written"):
        atomic_write(tmp_path / "data.h5", writer)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_folder_is_refused_before_any_work(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    make_readonly(ro, monkeypatch)
    try:
        with pytest.raises(NNPError) as err:
            check_writable(ro / "out.json")
        assert str(err.value).startswith(f"{ro}: cannot write here (")
        assert str(err.value).endswith("(permission denied)") or str(err.value).endswith("(read-only file system)")
        with pytest.raises(NNPError, match="cannot write here"):  # a folder to be created inside it
            check_writable(ro / "new" / "out.json")
    finally:
        ro.chmod(0o755)


# ----------------------------------------------------------------------------- the commands
def test_predict_refuses_an_existing_output_before_loading_and_replaces_it_with_overwrite(
    tmp_path, monkeypatch, capsys, model_file
):
    out = tmp_path / "pred.extxyz"
    out.write_text("old")
    before = listing(tmp_path)
    # the model does not even exist: the output is checked first
    code, text = nnp_cli(monkeypatch, capsys, "predict", f"ckpt={tmp_path / 'missing.pt'}", f"input={MOLECULES}", f"output={out}")
    assert code == 2
    assert error_line(text) == f"error: {out} already exists: choose another output, or overwrite=true"
    assert listing(tmp_path) == before
    code, text = nnp_cli(monkeypatch, capsys, "predict", f"ckpt={model_file}", f"input={MOLECULES}", f"output={out}", "overwrite=true")
    assert code == 0, text[-2000:]
    frames = ase.io.read(out, ":")
    assert len(frames) == 6 and frames[0].get_forces().shape == (9, 3)
    assert no_temp_files(tmp_path)
    code, text = nnp_cli(monkeypatch, capsys, "predict", f"ckpt={model_file}", f"input={MOLECULES}", f"output={tmp_path / 'p.weird'}")
    assert code == 2 and "cannot tell the output format" in error_line(text)


def test_evaluate_refuses_existing_json_or_plot_and_replaces_them_with_overwrite(
    tmp_path, monkeypatch, capsys, model_file, tiny_h5
):
    out = tmp_path / "report.json"
    data = ["data=demo", f"data.path={tiny_h5}"]
    out.with_suffix(".png").write_bytes(b"old png")  # only the plot exists
    before = listing(tmp_path)
    code, text = nnp_cli(monkeypatch, capsys, "evaluate", f"ckpt={tmp_path / 'missing.pt'}", *data, f"output={out}")
    assert code == 2
    assert error_line(text) == f"error: {out.with_suffix('.png')} already exists: choose another output, or overwrite=true"
    assert listing(tmp_path) == before
    code, text = nnp_cli(monkeypatch, capsys, "evaluate", f"ckpt={model_file}", *data, f"output={out}", "plot=false")
    assert code == 0, text[-2000:]  # no plot: the old PNG is not in the way
    assert json.loads(out.read_text())["n_structures"] == 60
    out_before = out.read_bytes()
    code, text = nnp_cli(monkeypatch, capsys, "evaluate", f"ckpt={model_file}", *data, f"output={out}", "plot=false")
    assert code == 2 and "already exists" in error_line(text) and out.read_bytes() == out_before
    code, text = nnp_cli(monkeypatch, capsys, "evaluate", f"ckpt={model_file}", *data, f"output={out}", "overwrite=true")
    assert code == 0, text[-2000:]
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
    assert no_temp_files(tmp_path)


def test_export_refuses_an_existing_file_and_replaces_it_with_overwrite(tmp_path, monkeypatch, capsys, model_file):
    from nnp.export import exported_metadata

    out = tmp_path / "model.ts"
    out.write_bytes(b"old")
    code, text = nnp_cli(monkeypatch, capsys, "export", f"ckpt={tmp_path / 'missing.pt'}", f"output={out}")
    assert code == 2
    assert error_line(text) == f"error: {out} already exists: choose another output, or overwrite=true"
    assert out.read_bytes() == b"old"
    code, text = nnp_cli(monkeypatch, capsys, "export", f"ckpt={model_file}", f"output={out}", "overwrite=true", "check=false")
    assert code == 0, text[-2000:]
    assert exported_metadata(out)["species"] == [1, 6, 7, 8]
    assert no_temp_files(tmp_path)


def test_unwritable_output_folder_is_one_line_before_any_work(tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    make_readonly(ro, monkeypatch)
    try:
        missing = tmp_path / "missing.pt"  # never reached: the output folder is checked first
        for args in (
            ("predict", f"ckpt={missing}", f"input={MOLECULES}", f"output={ro / 'p.extxyz'}"),
            ("evaluate", f"ckpt={missing}", f"output={ro / 'r.json'}"),
            ("export", f"ckpt={missing}", f"output={ro / 'sub' / 'm.ts'}"),
            ("data", "prepare", "qm9", f"out={ro / 'q.h5'}", f"source={missing}"),
        ):
            code, text = nnp_cli(monkeypatch, capsys, *args)
            assert code == 2, args
            line = error_line(text)
            assert line.startswith(f"error: {ro}: cannot write here ("), line
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_read_only_input_folder_is_only_read(tmp_path, monkeypatch, capsys, model_file, tiny_h5):
    """Model, structures and data in a read-only folder (also the working directory): every command
    works and nothing is written beside the inputs."""
    import shutil

    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for src in (model_file, MOLECULES, tiny_h5):
        shutil.copy(src, inputs / src.name)
    outputs = tmp_path / "outputs"
    before = listing(inputs)
    make_readonly(inputs, monkeypatch)
    monkeypatch.chdir(inputs)
    try:
        runs = [
            ("predict", "ckpt=model.pt", "input=molecules.extxyz", f"output={outputs / 'p.extxyz'}"),
            ("evaluate", "ckpt=model.pt", "data=demo", "data.path=tiny.h5", f"output={outputs / 'r.json'}", "plot=false"),
            ("export", "ckpt=model.pt", f"output={outputs / 'm.ts'}", "check=false"),
            ("data", "info", "tiny.h5"),
        ]
        for args in runs:
            code, text = nnp_cli(monkeypatch, capsys, *args)
            assert code == 0, (args, text[-2000:])
        assert listing(inputs) == before
        assert sorted(p.name for p in outputs.iterdir()) == ["m.ts", "p.extxyz", "r.json"]
        # the default export output is beside the model: refused with one line, nothing written
        code, text = nnp_cli(monkeypatch, capsys, "export", "ckpt=model.pt")
        assert code == 2 and "cannot write here" in error_line(text)
        assert listing(inputs) == before
    finally:
        inputs.chmod(0o755)


_FULL_DISK = textwrap.dedent(
    """
    import os, resource, signal, sys
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    import torch
    torch.set_num_threads(1)
    from nnp import cli
    from nnp.errors import NNPError
    limit = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    for line in sys.stdin:
        args = line.split()
        sys.argv = ["nnp"]
        try:
            code = cli.main(args)
        except SystemExit as stop:
            code = stop.code
        print("EXIT", args[0], code, flush=True)
    """
)


def test_full_disk_is_one_line_and_keeps_the_existing_files(tmp_path, model_file, tiny_h5):
    """A file-size limit (as a full disk does) stops each write midway: one line naming the file,
    the existing final file untouched, no temporary file."""
    out = tmp_path / "out"
    out.mkdir()
    names = ("p.extxyz", "r.json", "m.ts", "c.h5", "committee.pt")
    old = {name: f"old {name}".encode() for name in names}
    for name, content in old.items():
        (out / name).write_bytes(content)
    commands = [
        f"predict ckpt={model_file} input={MOLECULES} output={out / 'p.extxyz'} overwrite=true",
        f"evaluate ckpt={model_file} data=demo data.path={tiny_h5} output={out / 'r.json'} overwrite=true",
        f"export ckpt={model_file} output={out / 'm.ts'} overwrite=true check=false",
        f"data prepare ani1x out={out / 'c.h5'} source={tiny_h5} energy_key=gfn2.energy forces_key=gfn2.forces overwrite=true",
        f"ensemble combine {model_file} {model_file} output={out / 'committee.pt'} overwrite=true",
    ]
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", OMP_NUM_THREADS="1", COLUMNS="200")
    res = subprocess.run([sys.executable, "-c", _FULL_DISK, "300"], input="\n".join(commands) + "\n",
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    text = res.stdout + res.stderr
    assert res.returncode == 0 and "Traceback" not in text, text[-4000:]
    exits = [line.split() for line in text.splitlines() if line.startswith("EXIT")]
    assert [(e[1], e[2]) for e in exits] == [(c, "2") for c in ("predict", "evaluate", "export", "data", "ensemble")], text[-4000:]
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == len(names), text[-4000:]
    for line, name in zip(errors, names):
        assert line == f"error: {out / name}: cannot write (file too large for this file system or ulimit -f); the existing file is unchanged", line
    for name, content in old.items():
        assert (out / name).read_bytes() == content
    assert sorted(p.name for p in out.iterdir()) == sorted(old)  # no temporary files


def test_full_disk_during_evaluate_keeps_the_old_report(tmp_path, monkeypatch, capsys, model_file, tiny_h5):
    """ENOSPC (a real full disk's errno) midway through the JSON: one line, old report intact."""
    out = tmp_path / "r.json"
    out.write_text('{"old": true}\n')
    real_write_text = Path.write_text

    def full_disk(self, data, *args, **kw):
        if ".tmp" in self.name:
            real_write_text(self, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_text(self, data, *args, **kw)

    monkeypatch.setattr(Path, "write_text", full_disk)
    code, text = nnp_cli(monkeypatch, capsys, "evaluate", f"ckpt={model_file}", "data=demo", f"data.path={tiny_h5}",
                         f"output={out}", "overwrite=true", "plot=false")
    assert code == 2
    assert error_line(text) == f"error: {out}: cannot write (no space left on device); the existing file is unchanged"
    assert out.read_text() == '{"old": true}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_model_save_on_a_full_disk_keeps_the_old_model(tmp_path, monkeypatch, model_file):
    """Potential.save and Committee.save: ENOSPC midway is one line; the old model.pt still loads."""
    import builtins

    import nnp.outputs
    from nnp.committee import Committee, load_model

    path = tmp_path / "model.pt"
    path.write_bytes(model_file.read_bytes())
    committee = load_model([str(model_file), str(model_file)])
    assert isinstance(committee, Committee)

    class FullDisk:
        def __init__(self, name, mode="r", *args, **kw):
            self.fh = builtins.open(name, mode, *args, **kw)

        def write(self, data):
            self.fh.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    monkeypatch.setattr(nnp.outputs, "open", FullDisk, raising=False)
    for model in (Potential.load(model_file), committee):
        with pytest.raises(NNPError, match=r"model.pt: cannot write \(no space left on device\); the existing file is unchanged"):
            model.save(path)
        assert path.read_bytes() == model_file.read_bytes() and [p.name for p in tmp_path.iterdir()] == ["model.pt"]
    monkeypatch.undo()
    committee.save(path)  # and with room on the disk it is replaced
    assert load_model(path).n_members == 2 and [p.name for p in tmp_path.iterdir()] == ["model.pt"]


def test_md_refuses_an_existing_summary_and_writes_it_atomically(tmp_path, monkeypatch, capsys, model_file):
    """The md summary (a finished file) follows the rule; the trajectory and log are streams."""
    out = tmp_path / "md.extxyz"
    out.with_suffix(".json").write_text("old summary")
    args = ("md", f"ckpt={model_file}", f"input={REPO / 'datasets/aspirin.xyz'}", f"output={out}", "md.steps=4",
            "md.write_interval=2", "md.log_interval=2")
    code, text = nnp_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert error_line(text) == f"error: {out.with_suffix('.json')} already exists: choose another output, or overwrite=true"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["md.json"]
    code, text = nnp_cli(monkeypatch, capsys, *args, "overwrite=true")
    assert code == 0, text[-2000:]
    assert json.loads(out.with_suffix(".json").read_text())["steps_done"] == 4
    assert len(ase.io.read(out, ":")) == 3 and sorted(p.name for p in tmp_path.iterdir()) == [
        "md.csv", "md.extxyz", "md.extxyz.restart.npz", "md.json", "md.png"]


def test_train_refuses_an_unwritable_run_dir_before_hydra_creates_it(tmp_path, monkeypatch, capsys):
    """A run directory under a regular file (refused for root too), or under a read-only
    folder: one line, exit 2, before Hydra (whose own error is a multi-line HYDRA_FULL_ERROR)."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    code, text = nnp_cli(monkeypatch, capsys, "train", "data=demo", f"hydra.run.dir={blocker / 'run'}")
    assert code == 2, text[-2000:]
    line = error_line(text)
    assert line == f"error: {blocker / 'run'}: cannot create this folder ({blocker} is a file)", line
    assert "HYDRA_FULL_ERROR" not in text
    assert blocker.read_text() == "not a folder"

    ro = tmp_path / "ro"
    ro.mkdir()
    make_readonly(ro, monkeypatch)
    try:
        code, text = nnp_cli(monkeypatch, capsys, "train", "data=demo", f"hydra.run.dir={ro / 'runs' / 'x'}")
        assert code == 2, text[-2000:]
        assert error_line(text).startswith(f"error: {ro}: cannot write here ("), text
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)
