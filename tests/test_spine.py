"""The spine: CLI dispatch, user errors, run directories, atomic writes, checkpoints, packaging."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from recon4d.cli.main import SUBCOMMANDS, main
from recon4d.errors import UserError
from recon4d.rundir import RunDir
from recon4d.utils.atomic import atomic_directory, atomic_write_json, read_jsonl
from recon4d.utils.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[1]


def test_top_level_help_lists_every_subcommand(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in SUBCOMMANDS:
        assert f"  {name} " in out


def test_unknown_command_is_one_line_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown command 'frobnicate'" in err[0]


def test_help_does_not_import_torch():
    code = ("import sys; from recon4d.cli.main import main; main(['--help']); "
            "assert 'torch' not in sys.modules, 'torch imported by --help'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("name", sorted(SUBCOMMANDS))
def test_subcommand_help_is_fast_and_light(name):
    code = (f"import sys; from recon4d.cli.main import main; rc = main(['{name}', '--help']); "
            "assert rc == 0, rc; assert 'torch' not in sys.modules, 'torch imported by --help'")
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_user_error_exit_code_and_no_traceback(monkeypatch, capsys):
    import types
    from dataclasses import dataclass

    @dataclass
    class Config:
        """A command that always meets a user error."""

        path: str = "x"

    def run(config):
        raise UserError(f"input '{config.path}' does not exist: check the path")

    module = types.ModuleType("recon4d.cli.failing")
    module.Config, module.run = Config, run
    monkeypatch.setitem(sys.modules, "recon4d.cli.failing", module)
    monkeypatch.setitem(SUBCOMMANDS, "failing", "test command")
    assert main(["failing", "--path", "clip.mp4"]) == 2
    err = capsys.readouterr().err
    assert err == "recon4d: error: input 'clip.mp4' does not exist: check the path\n"
    assert main(["failing", "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_bad_option_exits_2():
    proc = subprocess.run([sys.executable, "-m", "recon4d", "ingest", "--no-such-option"],
                          capture_output=True, text=True)
    assert proc.returncode == 2


@pytest.mark.parametrize("argv, expected", [
    (["fit", "clip.mp4", "--steps", "abc"], "--steps takes an integer, got 'abc'"),
    (["fit"], "missing argument PATH: run 'recon4d fit --help' for the options"),
    (["fit", "clip.mp4", "--bogus"], "unrecognized option '--bogus'"),
    (["fit", "clip.mp4", "--preset", "best"], "--preset must be one of cpu-fast, gpu-quality, test, got 'best'"),
    (["fit", "clip.mp4", "--resume", "1"], "unrecognized argument '1'"),
    (["fit", "clip.mp4", "--backend"], "--backend needs one of auto, reference, native, gsplat"),
    (["ingest", "clip.mp4"], "missing option --out"),
    (["render", "run", "--time", "noon"], "--time takes a number, got 'noon'"),
])
def test_a_rejected_option_is_one_line_exit_2(argv, expected, capsys):
    """tyro's boxed panel (ten lines or more) becomes recon4d's one line naming the fix."""
    assert main(argv) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("recon4d: error: ") and expected in err[0], err[0]


def test_atomic_directory_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out"
    with pytest.raises(RuntimeError):
        with atomic_directory(target) as tmp:
            (tmp / "half.txt").write_text("half")
            raise RuntimeError("killed")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def _record_fsyncs_and_renames(monkeypatch) -> list:
    """Record ("fsync", path) and ("replace", source) in call order in recon4d.utils.atomic."""
    import recon4d.utils.atomic as atomic

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(
        f"/proc/self/fd/{fd}"))), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append(("replace", str(a))),
                                                            real_replace(a, b))[1])
    return events


def test_a_file_written_by_name_reaches_the_disk_before_its_name(tmp_path, monkeypatch):
    """atomic_path (checkpoints, videos, GLBs): the temporary's data are fsynced before the
    rename, so a power cut cannot leave the final name on an empty file."""
    import recon4d.utils.atomic as atomic

    events = _record_fsyncs_and_renames(monkeypatch)
    with atomic.atomic_path(tmp_path / "ckpt.pt") as tmp:
        tmp.write_bytes(b"weights")
    assert (tmp_path / "ckpt.pt").read_bytes() == b"weights"
    assert events[:2] == [("fsync", str(tmp)), ("replace", str(tmp))], events


def test_a_directory_tree_reaches_the_disk_before_its_name(tmp_path, monkeypatch):
    """atomic_directory (datasets, exports): every file and folder in the temporary tree is
    fsynced before the rename, so a renamed dataset cannot hold empty files."""
    import recon4d.utils.atomic as atomic

    events = _record_fsyncs_and_renames(monkeypatch)
    with atomic.atomic_directory(tmp_path / "dataset") as tmp:
        (tmp / "frames").mkdir()
        (tmp / "frames" / "00000.png").write_bytes(b"png")
        (tmp / "dataset.json").write_text("{}")
    assert (tmp_path / "dataset" / "frames" / "00000.png").read_bytes() == b"png"
    rename = events.index(("replace", str(tmp)))
    synced = {name for kind, name in events[:rename] if kind == "fsync"}
    assert {str(tmp / "frames" / "00000.png"), str(tmp / "dataset.json"),
            str(tmp / "frames"), str(tmp)} <= synced, events


def test_atomic_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "x.json", {"a": float("nan")})
    assert not (tmp_path / "x.json").exists()
    assert list(tmp_path.iterdir()) == []


def test_run_dir_config_round_trip_and_schema_check(tmp_path):
    run = RunDir(tmp_path / "run").create()
    run.write_config({"steps": 10, "path": Path("/a")}, kind="fit")
    assert run.read_config() == {"steps": 10, "path": "/a"}
    payload = json.loads(run.config_path.read_text())
    payload["schema_version"] = 99
    run.config_path.write_text(json.dumps(payload))
    with pytest.raises(UserError, match="schema_version 99"):
        run.read_config()


def test_metrics_log_skips_truncated_line(tmp_path):
    run = RunDir(tmp_path).create()
    run.log_metrics({"step": 1, "loss": 0.5})
    with open(run.metrics_log, "a") as handle:
        handle.write('{"step": 2, "lo')  # a writer killed mid-line
    assert read_jsonl(run.metrics_log) == [{"step": 1, "loss": 0.5}]


def test_checkpoints_atomic_latest_and_safe_load(tmp_path):
    import torch

    for step in (10, 20, 30, 40):
        save_checkpoint(tmp_path, step, {"x": torch.full((2,), float(step)), "step": step}, keep=2)
    latest = latest_checkpoint(tmp_path)
    assert latest.name == "step_0000040.pt"
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["step_0000030.pt", "step_0000040.pt"]
    state = load_checkpoint(latest)
    assert state["step"] == 40 and torch.equal(state["x"], torch.full((2,), 40.0))
    latest.write_bytes(b"garbage")
    with pytest.raises(UserError, match="cannot be read"):
        load_checkpoint(latest)
    # The temporary of a write killed before its rename goes with the next save.
    stale = tmp_path / ".tmp-step_0000050-abc.pt"
    stale.write_bytes(b"half a checkpoint")
    save_checkpoint(tmp_path, 60, {"step": 60}, keep=2)
    assert not stale.exists() and latest_checkpoint(tmp_path).name == "step_0000060.pt"


class Evil:
    """Any class: weights_only loading must refuse to unpickle it."""


def test_checkpoint_refuses_pickled_objects(tmp_path):
    import torch

    path = tmp_path / "step_0000001.pt"
    torch.save({"obj": Evil()}, path)
    with pytest.raises(UserError):
        load_checkpoint(path)


def test_wheel_contains_viewer_scenes_and_kernel_sources(tmp_path):
    """A regular (non-editable) install must find the top-level folders too."""
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "-q", "-w", str(tmp_path), str(REPO)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("recon4d-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "recon4d/cuda/__init__.py" in names
    assert "recon4d/scenes/__init__.py" in names
    assert "recon4d/viewer/__init__.py" in names
    assert any(n.startswith("recon4d/cuda/") and n.endswith((".cpp", ".cu")) for n in names) or \
        not any(p.suffix in (".cpp", ".cu") for p in (REPO / "cuda").iterdir())


def test_line_progress_estimates_time_left(monkeypatch, capsys):
    """Without a terminal, progress lines carry a remaining-time estimate from the mean pace."""
    from recon4d.utils import console

    clock = iter(float(t) for t in range(0, 1000, 10))  # start at 0, then 10 s per item
    monkeypatch.setattr(console.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(console, "bars_enabled", lambda: False)
    assert list(console.track(range(4), description="fit", every=1)) == [0, 1, 2, 3]
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0] == "fit: 1/4 (10.0s, about 30s left)"
    assert lines[1] == "fit: 2/4 (20.0s, about 20s left)"
    assert lines[-1] == "fit: 4/4 (40.0s)"
    assert console.format_duration(150) == "2 min" and console.format_duration(3900) == "1 h 05 min"


# Outputs that cannot be written --------------------------------------------------------------
def _frames_folder(root: Path) -> Path:
    """A tiny real input (4 PNG frames); the output checks below must fail before reading it."""
    from test_ingest import blob_clip, write_pngs

    frames, _ = blob_clip(frames=4)
    return write_pngs(root / "frames", frames)


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize("command", ["fit", "ingest", "scenes"])
def test_out_under_a_file_fails_at_once_in_one_line(command, capsys, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    out = blocker / "run"
    argv = {"fit": ["fit", str(_frames_folder(tmp_path)), "--out", str(out), "--quiet"],
            "ingest": ["ingest", str(_frames_folder(tmp_path)), "--out", str(out), "--quiet"],
            "scenes": ["scenes", "make", "blob", "--out", str(out)]}[command]
    before = _tree(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err == (f"recon4d: error: --out '{out}' cannot be created: '{blocker}' is a file, "
                   "not a folder: choose another --out\n")
    assert _tree(tmp_path) == before, "something was written"


def test_render_out_under_a_file_fails_in_one_line(capsys, tmp_path):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")
    assert main(["render", str(tmp_path / "run"), "--out", str(blocker / "clip.mp4")]) == 2
    assert "'notes.txt' is a file, not a folder" in capsys.readouterr().err.replace(str(tmp_path) + "/", "")


@pytest.mark.skipif(not Path("/proc/self").exists(), reason="needs Linux's /proc (a folder no one can write in)")
def test_out_on_an_unwritable_filesystem_fails_in_one_line(capsys, tmp_path):
    # /proc refuses new entries even to root, which plain permission bits do not.
    assert main(["fit", str(_frames_folder(tmp_path)), "--out", "/proc/recon4d-test/run", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("recon4d: error: --out '/proc/recon4d-test/run' "
                                               "cannot be written (")


def test_out_without_permission_names_the_fix(monkeypatch, tmp_path):
    import errno

    from recon4d.utils import output_location

    def refuse(**kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", kwargs.get("dir"))

    monkeypatch.setattr(output_location.tempfile, "mkdtemp", refuse)
    with pytest.raises(UserError, match=r"cannot be written \(Permission denied\): choose a --out "
                                        r"folder you can write to"):
        output_location.require_writable_output(tmp_path / "a" / "b")
    # An existing output folder (resume, --overwrite) is probed inside, and passes when writable.
    monkeypatch.undo()
    output_location.require_writable_output(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_atomic_directory_under_a_file_is_not_reported_as_existing(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        with atomic_directory(tmp_path / "f" / "out"):
            pass


def _failing_command(monkeypatch, exc: BaseException) -> None:
    import types
    from dataclasses import dataclass

    @dataclass
    class Config:
        """A command whose run raises ``exc``."""

        path: str = "x"

    def run(config):
        raise exc

    module = types.ModuleType("recon4d.cli.failing")
    module.Config, module.run = Config, run
    monkeypatch.setitem(sys.modules, "recon4d.cli.failing", module)
    monkeypatch.setitem(SUBCOMMANDS, "failing", "test command")


def test_full_disk_mid_run_is_one_line_exit_1(monkeypatch, capsys):
    import errno

    _failing_command(monkeypatch, OSError(errno.ENOSPC, "No space left on device",
                                          "runs/clip/checkpoints/step_000900.pt"))
    assert main(["failing"]) == 1
    err = capsys.readouterr().err
    assert err == ("recon4d: error: no space left on the disk (runs/clip/checkpoints/step_000900.pt): "
                   "free some space, then run the command again ('recon4d fit ... --resume' "
                   "continues a fit from its last checkpoint)\n")
    assert main(["failing", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err


def test_other_os_errors_are_one_line_with_the_path(monkeypatch, capsys):
    import errno

    _failing_command(monkeypatch, PermissionError(errno.EACCES, "Permission denied", "/data/out"))
    assert main(["failing"]) == 1
    assert capsys.readouterr().err == ("recon4d: error: permission denied (/data/out): choose a "
                                       "folder you can write to, or fix its permissions\n")
    _failing_command(monkeypatch, OSError(errno.EIO, "Input/output error", "/mnt/x"))
    assert main(["failing"]) == 1
    assert capsys.readouterr().err == ("recon4d: error: Input/output error (/mnt/x) (run with "
                                       "--debug for the traceback)\n")


@pytest.mark.parametrize("command", [["--help"], ["scenes", "--help"], ["scenes", "list"]])
def test_a_closed_output_pipe_stops_quietly(command):
    """`recon4d ... | head`: the reader goes away before recon4d writes; no traceback and no
    error line, exit status 141 (128 + SIGPIPE) as Unix tools give."""
    proc = subprocess.Popen([sys.executable, "-m", "recon4d", *command], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=REPO)
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(timeout=120) == 141
    assert err == ""


def _with_paths(command: list[str], tmp_path) -> list[str]:
    """``command`` with RUN and OUT replaced by a run folder and a demo folder under tmp_path."""
    places = {"RUN": str(tmp_path / "run"), "OUT": str(tmp_path / "demo")}
    return [places.get(word, word) for word in command]


@pytest.mark.parametrize("command", [
    ["render", "RUN", "--backend", "gsplat"],
    ["export", "RUN", "--backend", "gsplat"],
    ["eval", "RUN", "--backend", "gsplat"],
    ["demo", "--out", "OUT", "--backend", "gsplat"],
    ["demo", "--out", "OUT", "--backend", "vulkan"],
])
def test_a_backend_that_cannot_run_is_refused_before_any_work(tmp_path, capsys, command):
    """render, export, eval (and the demo's export and evaluation) render on the CPU, where gsplat
    has no path: one line naming why, before a run is read or anything is written."""
    assert main(_with_paths(command, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    backend = command[-1]
    assert len(err) == 1 and f"--backend {backend} cannot run here" in err[0], err
    assert "use --backend auto" in err[0]
    assert not (tmp_path / "demo").exists()


@pytest.mark.parametrize("command, expected", [
    (["render", "RUN", "--fps", "0"], "--fps must be a positive number"),
    (["render", "RUN", "--fps", "nan"], "--fps must be a positive number"),
    (["export", "RUN", "--fps", "-24"], "--fps must be a positive number"),
    (["export", "RUN", "--texture", "--texture-size", "0"], "--texture-size 0 is too small"),
    (["demo", "--out", "OUT", "--steps", "0"], "--steps must be at least 1"),
    (["eval", "RUN", "--mesh-views", "0"], "--mesh-views >= 4"),
    (["scenes", "make", "default", "--out", "OUT", "--seed", "-1"], "--seed must be 0 or more"),
])
def test_numbers_that_cannot_work_are_one_line(tmp_path, capsys, command, expected):
    assert main(_with_paths(command, tmp_path)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err


def test_sigterm_unwinds_a_command_and_its_atomic_output(tmp_path, capsys, monkeypatch):
    """SIGTERM (``kill``) mid-command: one line, exit 143, and the half-written output's
    temporary removed by the unwinding (it used to stay beside --out)."""
    import os
    import signal

    import recon4d.cli.scenes as scenes_cli

    def killed_mid_write(config):
        with atomic_directory(tmp_path / "out") as tmp:
            (tmp / "half.txt").write_text("half")
            os.kill(os.getpid(), signal.SIGTERM)
            (tmp / "rest.txt").write_text("never written")
        return 0

    monkeypatch.setattr(scenes_cli, "run", killed_mid_write)
    before = signal.getsignal(signal.SIGTERM)
    assert main(["scenes", "list"]) == 143
    assert capsys.readouterr().err.strip().splitlines() == [
        "recon4d: interrupted: terminated (SIGTERM)"]
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is before  # restored after the command
