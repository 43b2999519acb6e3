"""Training: strategy keeps rows aligned, a tiny CPU fit writes a loadable run, kill + resume,
NaN handling, CLI errors. Data: a synthetic textured ball, ray-cast here with numpy (independent
of recon4d's renderer)."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from recon4d.cli.main import main
from recon4d.data.dataset import CameraSet, load_dataset, write_dataset
from recon4d.errors import UserError
from recon4d.model import load_run
from recon4d.model.canonical import CanonicalSurfels
from recon4d.model.protocol import DynamicScene
from recon4d.model.scene import DynamicSurfelModel
from recon4d.rundir import RunDir
from recon4d.train import fit
from recon4d.train.config import (StrategyConfig, apply_overrides, config_from_dict,
                                  config_problem, preset, resolve_for_dataset,
                                  scale_for_resolution)
from recon4d.train.optim import Adam
from recon4d.train.strategy import DensifyPrune, edit_rows
from recon4d.utils.checkpoint import latest_checkpoint

REPO = Path(__file__).resolve().parents[1]


def make_ball_dataset(out: Path, size: int = 32, frames: int = 8,
                      background: tuple = (1.0, 1.0, 1.0)) -> Path:
    """A checker-textured ball moving sideways and spinning, seen by a fixed camera at 2.7,
    over ``background``."""
    focal = size / 2 / np.tan(np.deg2rad(20))
    ys, xs = np.mgrid[0:size, 0:size] + 0.5
    dirs = np.stack([(xs - size / 2) / focal, (ys - size / 2) / focal, np.ones_like(xs)], -1)
    dirs /= np.linalg.norm(dirs, axis=-1, keepdims=True)
    images, masks = [], []
    radius = 0.45
    for i in range(frames):
        t = i / (frames - 1)
        centre = np.array([0.25 * (t - 0.5), 0.0, 2.7])
        # Ray-sphere intersection: |s d - c|^2 = r^2.
        b = dirs @ centre
        disc = b ** 2 - (centre @ centre - radius ** 2)
        hit = disc > 0
        s = b - np.sqrt(np.maximum(disc, 0))
        p = dirs * s[..., None] - centre
        angle = np.arctan2(p[..., 0], p[..., 2]) + 1.2 * t  # spin about the vertical axis
        lat = np.arcsin(np.clip(p[..., 1] / radius, -1, 1))
        checker = ((np.floor(angle / (np.pi / 4)) + np.floor(lat / (np.pi / 6))) % 2)[..., None]
        color = checker * np.array([0.9, 0.3, 0.1]) + (1 - checker) * np.array([0.1, 0.4, 0.9])
        img = np.where(hit[..., None], color, np.asarray(background))
        images.append(img.astype(np.float32))
        masks.append(hit.astype(np.float32))
    view = np.eye(4)
    K = np.array([[focal, 0, size / 2], [0, focal, size / 2], [0, 0, 1]])
    cams = CameraSet(np.repeat(view[None], frames, 0), np.repeat(K[None], frames, 0), "fixed")
    return write_dataset(out, np.stack(images), np.stack(masks), np.linspace(0, 1, frames), cams,
                         {"type": "synthetic-ball"}, "synthetic", background=background)


@pytest.fixture(scope="module")
def ball(tmp_path_factory) -> Path:
    return make_ball_dataset(tmp_path_factory.mktemp("ball") / "dataset")


def _tiny(**extra):
    return apply_overrides(preset("test"), {"backend": "auto", **extra})


def test_two_step_fit_writes_a_run_that_loads_back(ball, tmp_path):
    config = _tiny(coarse_surfels=0, **{"full.steps": 2, "checkpoint_every": 100})
    run_dir = fit(ball, tmp_path / "run", config=config)
    run = RunDir(run_dir)
    saved = run.read_config()
    assert saved["full"]["steps"] == 2 and config_from_dict(saved) == resolve_for_dataset(config, 32, 32, 8)
    records = run.read_metrics_log()
    steps = [r for r in records if "loss" in r]
    assert [r["step"] for r in steps] == [0, 1]
    assert all(np.isfinite(r["loss"]) and r["psnr"] > 5 for r in steps)
    assert records[-1]["final"] and "heldout_psnr" in records[-1]
    assert "fit" in run.read_metrics() and latest_checkpoint(run.checkpoints).name == "step_0000002.pt"
    assert (run.dataset / "manifest.json").is_file()
    model = load_run(run_dir)
    assert isinstance(model, DynamicScene)
    assert model.num_bones == 4 and model.frame_times.shape == (8,)
    assert model.skinning_weights(model.canonical.means.detach()).shape == (len(model.canonical), 4)
    surfels = model.surfels_at(0.5)
    assert surfels.means.shape == (len(model.canonical), 3)
    assert torch.isfinite(surfels.means).all()
    assert model.input_cameras().viewmats.shape == (8, 4, 4)


def test_strategy_keeps_extras_and_optimizer_state_aligned():
    n = 400
    g = torch.Generator().manual_seed(0)
    canon = CanonicalSurfels.from_points(torch.randn(n, 3, generator=g), torch.randn(n, 3, generator=g),
                                         torch.rand(n, 3, generator=g), 0.05)
    model = DynamicSurfelModel.build(canon, torch.linspace(0, 1, 4), torch.linspace(0, 1, 4),
                                     torch.eye(4).repeat(4, 1, 1), torch.eye(3).repeat(4, 1, 1),
                                     8, 8, num_bones=3, bone_centers=torch.zeros(3, 3),
                                     bone_radius=1.0, refine_freqs=2)
    ids = torch.arange(n, dtype=torch.float32)
    rows = canon.row_parameters()
    opt = Adam([{"params": [p], "name": k, "lr": 1e-3} for k, p in rows.items()])
    for p in rows.values():
        p.grad = torch.ones_like(p)
    opt.step()  # creates the Adam state; the rows are tagged with their id afterwards
    with torch.no_grad():
        canon.sh_dc[:, 0, 0] = ids
        canon.skin_logits[:, 0] = ids
        canon.refine_coeffs[:, 0, 0] = ids
        canon.opacity_logits[:] = 0.0
        canon.opacity_logits[:50] = -10.0            # these get pruned
        canon.log_scales[::3] += 2.0                  # these are large: split, not cloned
    for p in rows.values():  # Adam moments tagged with the row id
        opt.state[p]["exp_avg"] = ids.reshape((-1,) + (1,) * (p.ndim - 1)).expand_as(p).clone()
    strategy = DensifyPrune(StrategyConfig(start=0.0, every=1, grow_fraction=0.2, max_surfels=1000),
                            extent=1.0)
    strategy.reset(n)
    canon.means.grad = torch.rand(n, 3, generator=g)
    strategy.after_backward(canon)
    assert strategy.step(canon, opt, step=1, progress=0.5)
    m = len(canon)
    tag = canon.sh_dc[:, 0, 0].detach()
    assert m != n and not torch.isin(torch.arange(50.0), tag).any()  # pruned rows are gone
    assert torch.equal(canon.skin_logits[:, 0].detach(), tag)
    assert torch.equal(canon.refine_coeffs[:, 0, 0].detach(), tag)
    for name, p in canon.row_parameters().items():
        assert p.shape[0] == m, name
        group_params = [q for grp in opt.param_groups for q in grp["params"]]
        assert any(q is p for q in group_params), f"{name} not in the optimizer"
        moment = opt.state[p]["exp_avg"]
        assert moment.shape == p.shape
        if p[0].numel() == 0:  # sh_rest at degree 0 has no columns
            continue
        kept = moment.reshape(m, -1)[:, 0]
        # Surviving rows keep their moments; appended rows start at zero.
        survivors = kept != 0
        assert torch.equal(kept[survivors], tag[survivors])
    edit_rows(canon, opt, torch.arange(10))
    assert all(p.shape[0] == 10 for p in canon.row_parameters().values())


def test_adam_matches_torch_and_round_trips_its_state():
    g = torch.Generator().manual_seed(0)
    start = torch.randn(5, 3, generator=g)
    ours_p = torch.nn.Parameter(start.clone())
    ref_p = torch.nn.Parameter(start.clone())
    ours = Adam([{"name": "x", "params": [ours_p], "lr": 0.05}], eps=1e-8)
    ref = torch.optim.Adam([ref_p], lr=0.05, eps=1e-8)
    for _ in range(5):
        for p, opt in ((ours_p, ours), (ref_p, ref)):
            opt.zero_grad()
            ((p - 1.0) ** 4).sum().backward()
            opt.step()
    assert torch.allclose(ours_p, ref_p, atol=1e-6)
    again = Adam([{"name": "x", "params": [ours_p], "lr": 0.0}])
    again.load_state_dict(ours.state_dict())
    assert again.param_groups[0]["step"] == 5 and again.param_groups[0]["lr"] == 0.05
    assert torch.equal(again.state[ours_p]["exp_avg"], ours.state[ours_p]["exp_avg"])


def test_non_finite_steps_are_skipped_then_divergence_stops(ball, tmp_path, monkeypatch):
    from recon4d.train import trainer as trainer_mod

    original = trainer_mod.Trainer.compute_losses
    poisoned = {1}

    def flaky(self, frames, stage, progress):
        total, values, photo = original(self, frames, stage, progress)
        if self.step in poisoned or "all" in poisoned:
            total = total * float("nan")
        return total, values, photo

    monkeypatch.setattr(trainer_mod.Trainer, "compute_losses", flaky)
    config = _tiny(coarse_surfels=0, **{"full.steps": 3, "checkpoint_every": 100})
    run_dir = fit(ball, tmp_path / "flaky", config=config)
    records = RunDir(run_dir).read_metrics_log()
    assert [r["step"] for r in records if "skipped" in r] == [1]
    model = load_run(run_dir)
    assert all(torch.isfinite(p).all() for p in model.parameters())

    poisoned.add("all")
    config = _tiny(coarse_surfels=0, max_bad_steps=3, **{"full.steps": 10})
    with pytest.raises(UserError, match="diverged"):
        fit(ball, tmp_path / "diverged", config=config)


_FIT_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    from recon4d.train import fit
    from recon4d.train.config import apply_overrides, preset
    dataset, run_dir, kill_at, resume = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
    config = apply_overrides(preset("test"), {"coarse.steps": 3, "full.steps": 7,
                                              "checkpoint_every": 4})
    def on_step(step, model, metrics):
        if step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    fit(dataset, run_dir, config=config, resume=resume, on_step=on_step)
""")


def _fit_subprocess(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "CI": "1", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", _FIT_SCRIPT, *map(str, args)], env=env,
                          capture_output=True, text=True, timeout=300)


def test_sigkill_mid_fit_then_resume_matches_an_uninterrupted_run(ball, tmp_path):
    config = apply_overrides(preset("test"), {"coarse.steps": 3, "full.steps": 7,
                                              "checkpoint_every": 4})
    fit(ball, tmp_path / "straight", config=config)  # the same settings as the script's
    killed = _fit_subprocess(ball, tmp_path / "killed", 6, 0)
    assert killed.returncode == -9  # SIGKILL: no chance to clean up
    assert latest_checkpoint(tmp_path / "killed" / "checkpoints").name == "step_0000004.pt"
    resumed = _fit_subprocess(ball, tmp_path / "killed", -1, 1)
    assert resumed.returncode == 0, resumed.stderr
    a = RunDir(tmp_path / "straight").read_metrics()["fit"]
    b = RunDir(tmp_path / "killed").read_metrics()["fit"]
    assert a["steps"] == b["steps"] == 10
    assert abs(a["train_psnr"] - b["train_psnr"]) < 0.2, (a, b)
    final = [r for r in RunDir(tmp_path / "killed").read_metrics_log() if "loss" in r]
    straight_log = [r for r in RunDir(tmp_path / "straight").read_metrics_log() if "loss" in r]
    assert final[-1]["step"] == straight_log[-1]["step"] == 9
    assert abs(final[-1]["loss"] - straight_log[-1]["loss"]) < 0.05 * straight_log[-1]["loss"], \
        (final[-1], straight_log[-1])
    ma, mb = load_run(tmp_path / "straight"), load_run(tmp_path / "killed")
    assert len(ma.canonical) == len(mb.canonical)
    assert torch.allclose(ma.canonical.means, mb.canonical.means, atol=1e-3)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_resume_restores_a_checkpoint_on_each_device(ball, tmp_path, device):
    """A checkpoint mapped onto the fit's device still restores: its RNG states must go back as
    CPU byte tensors (on CUDA, before the fix, every --resume raised 'RNG state must be a
    torch.ByteTensor')."""
    config = apply_overrides(preset("test"), {"coarse.steps": 3, "full.steps": 7,
                                              "checkpoint_every": 4, "device": device})
    fit(ball, tmp_path / "run", config=config)
    folder = tmp_path / "run" / "checkpoints"
    (folder / "step_0000010.pt").unlink()            # as if killed after step 8's checkpoint
    fit(ball, tmp_path / "run", resume=True)
    steps = [r["step"] for r in RunDir(tmp_path / "run").read_metrics_log() if "loss" in r]
    assert steps[-1] == 9 and steps.count(9) == 2     # steps 8 and 9 ran again
    assert load_run(tmp_path / "run").fit_step == 10


def test_resume_after_a_kill_during_the_final_summary_writes_it(ball, tmp_path):
    """Killed after the final checkpoint, before the summary (the last renders of every frame):
    --resume finds the fit complete and writes the summary instead of leaving metrics.json
    without its "fit" record for good."""
    config = _tiny(coarse_surfels=0, **{"full.steps": 3, "checkpoint_every": 100})
    fit(ball, tmp_path / "run", config=config)
    run = RunDir(tmp_path / "run")
    expected = run.read_metrics()["fit"]
    metrics = run.read_metrics()
    del metrics["fit"]
    run.metrics_path.write_text(json.dumps(metrics))   # as if killed before update_metrics
    fit(ball, tmp_path / "run", resume=True)
    summary = run.read_metrics()["fit"]
    assert summary["steps"] == 3 and summary["fit_seconds"] is None
    assert summary["train_psnr"] == pytest.approx(expected["train_psnr"], abs=1e-6)
    assert summary["heldout_psnr"] == pytest.approx(expected["heldout_psnr"], abs=1e-6)


def test_rates_given_on_resume_apply_and_a_resume_the_checkpoint_cannot_take_changes_nothing(
        ball, tmp_path):
    """A learning rate given with --resume used to be overwritten by the checkpoint's for the
    rest of the stage; settings that switch a parameter group off raised a bare ValueError
    after config.json had been rewritten, so every later --resume failed the same way."""
    from recon4d.data.dataset import load_dataset
    from recon4d.train.trainer import Trainer

    small = {"coarse.steps": 3, "full.steps": 7, "checkpoint_every": 4}
    fit(ball, tmp_path / "run", preset="test", overrides=small)
    run = RunDir(tmp_path / "run")
    (run.checkpoints / "step_0000010.pt").unlink()              # resume at step 8 (full stage)
    saved = config_from_dict(run.read_config())
    faster = apply_overrides(saved, {"lr.sh_dc": 10 * saved.lr.sh_dc})
    trainer = Trainer(load_dataset(run.dataset), run, faster)
    assert trainer.restore() and trainer.stage_name == "full"
    rates = {g["name"]: g["base_lr"] for g in trainer.optimizer.param_groups}
    assert rates["sh_dc"] == pytest.approx(10 * saved.lr.sh_dc * saved.full.lr_scale)
    assert rates["opacity"] == pytest.approx(saved.lr.opacity * saved.full.lr_scale)

    recorded = run.config_path.read_bytes()
    with pytest.raises(UserError, match="cannot take the settings given now"):
        fit(ball, tmp_path / "run", resume=True, overrides={"full.train_refine": False})
    assert run.config_path.read_bytes() == recorded
    fit(ball, tmp_path / "run", resume=True)
    assert load_run(tmp_path / "run").fit_step == 10


def test_a_diverging_fit_keeps_its_last_good_checkpoint(ball, tmp_path, monkeypatch):
    """Checkpoints kept rotating through the skipped steps, so the last good one was pushed
    out by states of the diverging run."""
    from recon4d.train import trainer as trainer_mod

    original = trainer_mod.Trainer.compute_losses

    def diverging(self, frames, stage, progress):
        total, values, photo = original(self, frames, stage, progress)
        return (total * float("nan") if self.step >= 4 else total), values, photo

    monkeypatch.setattr(trainer_mod.Trainer, "compute_losses", diverging)
    config = _tiny(coarse_surfels=0, max_bad_steps=4,
                   **{"full.steps": 12, "checkpoint_every": 2})
    with pytest.raises(UserError, match="fit again into another --out"):
        fit(ball, tmp_path / "run", config=config)
    assert latest_checkpoint(tmp_path / "run" / "checkpoints").name == "step_0000004.pt"


def test_resume_refuses_another_input(ball, tmp_path):
    """Another clip given with --resume was ignored (the run's dataset there) or, with the
    run's dataset gone, ingested into the run, which then failed with an IndexError for good."""
    other = make_ball_dataset(tmp_path / "other", frames=6)
    fit(ball, tmp_path / "run", preset="test", overrides={"checkpoint_every": 2})
    with pytest.raises(UserError, match="was fitted on"):
        fit(other, tmp_path / "run", resume=True)
    shutil.rmtree(tmp_path / "run" / "dataset")
    with pytest.raises(UserError, match="fitted to another input"):
        fit(other, tmp_path / "run", resume=True)
    assert not (tmp_path / "run" / "dataset").exists()  # the other clip's copy is not kept
    fit(ball, tmp_path / "run", resume=True)  # the run's own input still resumes
    assert load_dataset(tmp_path / "run" / "dataset").num_frames == 8


@pytest.mark.parametrize("settings, expected", [
    ({"overrides": {"model.blend": "lbs"}}, "model.blend lbs cannot change on --resume"),
    ({"overrides": {"seed": 7}}, "seed 7 cannot change on --resume"),
    ({"preset": "cpu-fast"}, "preset cpu-fast cannot change on --resume"),
])
def test_resume_refuses_settings_the_checkpoint_fixes(ball, tmp_path, settings, expected):
    """They were written into config.json and never applied (the checkpoint's model stayed)."""
    fit(ball, tmp_path / "run", preset="test")
    recorded = (tmp_path / "run" / "config.json").read_bytes()
    with pytest.raises(UserError, match=expected):
        fit(ball, tmp_path / "run", resume=True, **settings)
    assert (tmp_path / "run" / "config.json").read_bytes() == recorded


def test_resume_given_the_starting_command_again_keeps_the_scaled_schedule(tmp_path):
    """A 256x256 clip's --steps N runs 2N steps (the budget grows with the frame); the same
    command line plus --resume applied N to the recorded, scaled config, so the fit ended
    early or reported "fit already complete". Another value than the run started with is
    refused like --blend, and a setting it does not fix (a rate) still applies."""
    clip = make_ball_dataset(tmp_path / "clip", frames=6, size=256)
    asked = {"coarse.steps": 2, "full.steps": 3, "model.num_surfels": 200, "coarse_surfels": 50,
             "strategy.max_surfels": 300, "checkpoint_every": 2, "num_threads": 1}
    fit(clip, tmp_path / "run", preset="test", overrides=asked)
    run = RunDir(tmp_path / "run")
    scaled = run.read_config()["full"]["steps"]
    assert scaled > 3 and run.read_requested()["full.steps"] == 3
    latest_checkpoint(run.checkpoints).unlink()        # as if killed before the last one
    fit(clip, tmp_path / "run", preset="test", resume=True,
        overrides={**asked, "lr.sh_dc": 0.01})
    assert run.read_config()["full"]["steps"] == scaled
    assert run.read_config()["lr"]["sh_dc"] == 0.01
    assert load_run(tmp_path / "run").fit_step == 2 + scaled
    assert run.read_requested()["full.steps"] == 3     # a resume keeps the record
    with pytest.raises(UserError, match="full.steps 5 cannot change on --resume"):
        fit(clip, tmp_path / "run", resume=True, overrides={"full.steps": 5})


@pytest.mark.parametrize("edit, expected", [
    ({"model": "x"}, "config.model must be an object of settings"),
    ({"full": {"losses": "x"}}, "config.full.losses must be an object of settings"),
])
def test_a_hand_edited_config_that_cannot_be_read_is_one_line(ball, tmp_path, edit, expected):
    fit(ball, tmp_path / "run", preset="test")
    path = tmp_path / "run" / "config.json"
    payload = json.loads(path.read_text())
    payload["config"].update(edit)
    path.write_text(json.dumps(payload))
    with pytest.raises(UserError, match=expected):
        fit(ball, tmp_path / "run", resume=True)


def test_out_inside_the_input_or_among_other_files_is_refused(ball, tmp_path):
    """--out inside the dataset folder copied the dataset into itself until the path was too
    long (a 160 kB error, exit 1); --out on a folder of other files mixed the run into them."""
    before = sorted(p.relative_to(ball) for p in ball.rglob("*"))
    for out in (ball / "run", ball):
        with pytest.raises(UserError, match="lies inside the input folder"):
            fit(ball, out, preset="test")
    assert sorted(p.relative_to(ball) for p in ball.rglob("*")) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "my_notes.txt").write_text("mine")
    with pytest.raises(UserError, match=r"already holds other files \(my_notes.txt\)"):
        fit(ball, notes, preset="test")
    assert sorted(p.name for p in notes.iterdir()) == ["my_notes.txt"]
    damaged = tmp_path / "damaged"
    fit(ball, damaged, preset="test")
    shutil.rmtree(damaged / "checkpoints")
    (damaged / "checkpoints").write_text("")
    with pytest.raises(UserError, match="is a file, not a folder: the run is damaged"):
        fit(ball, damaged, resume=True)


def test_fit_points_ingest_options_to_recon4d_ingest(tmp_path):
    """fit takes no --masks: a hint naming it used to lead to 'unrecognised option'."""
    from PIL import Image

    frames = tmp_path / "flat"
    frames.mkdir()
    for i in range(4):
        Image.new("RGB", (32, 32), (128, 128, 128)).save(frames / f"{i:03d}.png")
    with pytest.raises(UserError, match=r"--masks.*options of 'recon4d ingest .*flat --out DATASET'"):
        fit(frames, tmp_path / "run", preset="test")


def test_resume_with_nothing_to_resume_says_so_and_fits_from_the_start(ball, tmp_path, capsys):
    """`--resume` on a fresh --out, or on a run stopped before its first checkpoint, fits from
    step 0 and says so instead of failing or passing over it in silence."""
    config = _tiny(coarse_surfels=0, **{"full.steps": 2, "checkpoint_every": 100})
    capsys.readouterr()
    fit(ball, tmp_path / "run", config=config, resume=True)
    assert "nothing to resume in" in capsys.readouterr().err
    assert load_run(tmp_path / "run").fit_step == 2
    for path in (tmp_path / "run" / "checkpoints").glob("*.pt"):
        path.unlink()                      # as if stopped before the first checkpoint
    fit(ball, tmp_path / "run", resume=True)
    err = capsys.readouterr().err
    assert "no checkpoint in" in err and "starting from step 0" in err
    assert load_run(tmp_path / "run").fit_step == 2


def test_resume_skips_a_damaged_checkpoint(ball, tmp_path, capsys):
    """A checkpoint that no longer loads costs the steps since the one before it, not the run;
    when none loads, the error says to fit again."""
    config = apply_overrides(preset("test"), {"coarse.steps": 3, "full.steps": 7,
                                              "checkpoint_every": 4})
    fit(ball, tmp_path / "run", config=config)
    folder = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in folder.glob("*.pt")) == [
        "step_0000004.pt", "step_0000008.pt", "step_0000010.pt"]
    (folder / "step_0000010.pt").write_bytes(b"\0" * 100)  # a bad block where the last one was
    capsys.readouterr()
    fit(ball, tmp_path / "run", resume=True)
    err = capsys.readouterr().err
    assert "checkpoint '" in err and "step_0000010.pt' cannot be read" in err
    assert "resuming from 'step_0000008.pt' instead" in err
    steps = [r["step"] for r in RunDir(tmp_path / "run").read_metrics_log() if "loss" in r]
    assert steps[-1] == 9  # steps 8 and 9 ran again
    assert RunDir(tmp_path / "run").read_metrics()["fit"]["steps"] == 10
    assert load_run(tmp_path / "run").fit_step == 10  # the rewritten final checkpoint loads
    for path in folder.glob("*.pt"):
        path.write_bytes(b"garbage")
    with pytest.raises(UserError, match="no checkpoint in .* can be read \\(3 damaged\\): fit again"):
        fit(ball, tmp_path / "run", resume=True)


def test_fit_cli_bad_input_is_one_line_exit_2(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "missing.mp4"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not exist" in err[0]


def test_fit_cli_runs_on_a_dataset(ball, tmp_path):
    out = tmp_path / "cli"
    assert main(["fit", str(ball), "--out", str(out), "--preset", "test", "--steps", "1",
                 "--blend", "lbs", "--quiet"]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["model"]["blend"] == "lbs" and saved["config"]["full"]["steps"] == 1
    assert load_run(out).warp.bones.blend == "lbs"
    sym = tmp_path / "sym"
    assert main(["fit", str(ball), "--out", str(sym), "--preset", "test", "--steps", "1",
                 "--symmetry", "2.5", "--quiet"]) == 0
    saved = json.loads((sym / "config.json").read_text())["config"]
    assert saved["full"]["losses"]["symmetry"] == 2.5 and saved["coarse"]["losses"]["symmetry"] == 2.5
    assert main(["fit", str(ball), "--out", str(tmp_path / "neg"), "--symmetry", "-1", "--quiet"]) == 2


def test_gpu_quality_on_the_cpu_is_warned_before_the_work(ball, tmp_path, capsys):
    """Hours instead of minutes deserve a word at the start, not only in the progress line."""
    if torch.cuda.is_available():
        pytest.skip("the warning is for machines without a CUDA GPU")
    small = {"coarse.steps": 1, "full.steps": 1, "model.num_surfels": 200, "coarse_surfels": 50,
             "strategy.max_surfels": 300, "resolution_scaling": 1, "frames_scaling": 1,
             "num_threads": 1}
    fit(ball, tmp_path / "gq", preset="gpu-quality", overrides=small)
    assert "gpu-quality preset is running on the CPU" in capsys.readouterr().err
    fit(ball, tmp_path / "fast", preset="cpu-fast", overrides=small)
    assert "gpu-quality" not in capsys.readouterr().err


def test_fit_cli_detail_sets_the_resolution_scaling(monkeypatch, tmp_path, capsys):
    import recon4d.train.api as train_api

    seen = {}
    monkeypatch.setattr(train_api, "fit", lambda *args, overrides, **kw: seen.update(overrides)
                        or tmp_path)
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "run"), "--detail", "3",
                 "--quiet"]) == 0
    assert seen["resolution_scaling"] == 3.0
    assert apply_overrides(preset("cpu-fast"), seen).resolution_scaling == 3.0
    capsys.readouterr()
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "bad"), "--detail", "0.5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--detail" in err[0]


@pytest.mark.parametrize("option, value, expected", [
    ("--seed", "-3", "--seed must be between 0 and 2**63 - 1"),
    ("--seed", "99999999999999999999", "--seed must be between 0 and 2**63 - 1"),
    ("--threads", "0", "--threads must be between 1 and"),
    ("--threads", "-1", "--threads must be between 1 and"),
    ("--threads", "100000", "--threads must be between 1 and"),
    ("--steps", "99999999999999999999", "--steps must be between 1 and 10,000,000"),
    ("--symmetry", "nan", "--symmetry must be 0 or more"),
    ("--symmetry", "inf", "--symmetry must be 0 or more"),
    ("--detail", "inf", "--detail must be 1 or more"),
    ("--time-budget", "0", "--time-budget must be a positive number of minutes"),
    ("--time-budget", "nan", "--time-budget must be a positive number of minutes"),
    ("--backend", "gsplat", "--backend gsplat cannot run here (it renders on CUDA only"),
])
def test_fit_cli_bad_numbers_and_backends_are_one_line_before_any_work(ball, tmp_path, capsys,
                                                                     option, value, expected):
    if option == "--backend" and torch.cuda.is_available():
        pytest.skip("gsplat can run where CUDA is")
    out = tmp_path / "run"
    assert main(["fit", str(ball), "--out", str(out), "--preset", "test", option, value]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], err
    assert not out.exists()


def test_fit_refuses_settings_that_cannot_work_from_python_too(ball, tmp_path):
    bad = {"seed": -1, "num_threads": -2, "device": "tpu", "resolution_scaling": float("nan"),
           "full.steps": -5, "coarse.resolution": 0.0, "full.losses.photo": float("inf"),
           "coarse.losses.rigidity": [[0.0, 1.0], [1.0, -1.0]], "model.blend": "slerp",
           "model.num_surfels": 0, "model.init_profile": "cube", "time_budget_s": -1.0,
           "model.root_init": "sfm"}
    for key, value in bad.items():
        with pytest.raises(UserError, match=re.escape(f"{key} must")):
            fit(ball, tmp_path / "run", preset="test", overrides={key: value})
        assert not (tmp_path / "run").exists(), key
    with pytest.raises(UserError, match="--backend native cannot run here \\(boom\\)"):
        import recon4d.render.api as render_api

        saved = dict(render_api._native_state)
        render_api._native_state["cpu"] = {"core": None, "reason": "boom"}
        try:
            fit(ball, tmp_path / "run", preset="test", overrides={"backend": "native",
                                                                   "device": "cpu"})
        finally:
            render_api._native_state.clear()
            render_api._native_state.update(saved)


def test_ctrl_c_during_a_fit_says_how_to_resume(monkeypatch, tmp_path, capsys):
    """Ctrl+C: exit 130 and one line; with a checkpoint on disk it names the --resume command."""
    import recon4d.train.api as train_api
    from recon4d.utils.checkpoint import save_checkpoint

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_api, "fit", interrupted)
    out = tmp_path / "my run"
    assert main(["fit", str(tmp_path / "clip.mp4"), "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["recon4d: interrupted: no checkpoint was written yet; run the same command "
                   "again to start over"]
    save_checkpoint(out / "checkpoints", 200, {"step": 200})
    assert main(["fit", str(tmp_path / "clip.mp4"), "--out", str(out), "--quiet"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"recon4d: interrupted: continue with: recon4d fit {tmp_path / 'clip.mp4'} "
                   f"--out '{out}' --resume"]


def test_a_damaged_dataset_is_one_line_naming_the_file(ball, tmp_path, capsys):
    """A fit (and everything that reads a run's dataset) names the damaged file and the fix."""
    import shutil

    from recon4d.data.dataset import load_dataset, read_npz_array

    damaged = tmp_path / "damaged"
    shutil.copytree(ball, damaged)
    frame = sorted((damaged / "frames").iterdir())[1]
    frame.write_bytes(frame.read_bytes()[:40])  # a truncated PNG
    with pytest.raises(UserError, match=re.escape(f"{frame.name} cannot be read as an image")):
        load_dataset(damaged)
    frame.write_bytes(b"not an image")
    assert main(["fit", str(damaged), "--out", str(tmp_path / "run"), "--preset", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot be read as an image" in err[0] and "ingest the input again" \
        in err[0], err
    npz = tmp_path / "flow.npz"
    np.savez(npz, flow=np.zeros((2, 3), np.float32))
    assert read_npz_array(npz, "flow", "fix").shape == (2, 3)
    npz.write_bytes(npz.read_bytes()[:50])
    with pytest.raises(UserError, match="flow.npz cannot be read .*the dataset is damaged, fix"):
        read_npz_array(npz, "flow", "fix")
    # A dataset's manifest that no longer parses is not taken for a folder of frames.
    broken = tmp_path / "broken"
    shutil.copytree(ball, broken)
    (broken / "manifest.json").write_text("{")
    assert main(["fit", str(broken), "--out", str(tmp_path / "run2"), "--preset", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "manifest.json is not valid JSON: if" in err[0], err
    # A run folder given where a dataset belongs: its dataset is named.
    run = tmp_path / "a run"
    shutil.copytree(ball, run / "dataset")
    (run / "config.json").write_text("{}")
    assert main(["fit", str(run), "--out", str(tmp_path / "run3"), "--preset", "test"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"recon4d: error: '{run}' is a recon4d run, not frames: pass its dataset, "
                   f"'{run / 'dataset'}'"], err


_SIGNAL_FIT_SCRIPT = textwrap.dedent("""
    import sys
    import recon4d.train.config as config_module
    from recon4d.cli.main import main

    base = config_module.preset
    def long_test_preset(name):  # checkpoints only when asked to stop, and steps to spare
        return config_module.apply_overrides(base(name), {"full.steps": 100000,
                                                          "checkpoint_every": 1000000})
    config_module.preset = long_test_preset
    sys.exit(main(["fit", sys.argv[1], "--out", sys.argv[2], "--preset", "test"]
                  + sys.argv[3:]))
""")


def _signal_mid_fit(dataset: Path, run: Path, signum: int, *extra: str):
    """Start a fit, send ``signum`` once it has logged five more steps; return (exit code,
    stderr)."""
    import time as clock

    env = {**os.environ, "PYTHONPATH": str(REPO)}
    log = run / "logs" / "metrics.jsonl"
    before = len(log.read_text().splitlines()) if log.exists() else 0
    proc = subprocess.Popen([sys.executable, "-c", _SIGNAL_FIT_SCRIPT, str(dataset), str(run),
                             *extra], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    deadline = clock.monotonic() + 240
    while clock.monotonic() < deadline and proc.poll() is None:
        if log.exists() and len(log.read_text().splitlines()) >= before + 5:
            break
        clock.sleep(0.2)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def test_sigterm_and_ctrl_c_stop_a_fit_after_the_step_with_a_checkpoint(ball, tmp_path):
    """SIGTERM (a batch timeout, a preempted machine) and Ctrl+C end the current step, save a
    checkpoint at the step reached and name the --resume command; the resumed fit goes on from
    that step."""
    import signal as signals

    run = tmp_path / "run"
    code, err = _signal_mid_fit(ball, run, signals.SIGTERM)
    last = err.strip().splitlines()[-1]
    assert code == 143, err
    match = re.fullmatch(r"recon4d: interrupted: stopped at step (\d+) of (\d+) with a checkpoint; "
                         r"continue with: recon4d fit (\S+) --out (\S+) --resume", last)
    assert match, last
    step = int(match.group(1))
    assert step >= 5 and latest_checkpoint(run / "checkpoints").name == f"step_{step:07d}.pt"
    assert "Traceback" not in err
    code, err = _signal_mid_fit(ball, run, signals.SIGINT, "--resume")
    assert code == 130, err
    resumed = int(re.search(r"stopped at step (\d+)", err).group(1))
    assert resumed > step and latest_checkpoint(run / "checkpoints").name == \
        f"step_{resumed:07d}.pt"


def test_rendered_flow_reads_back_the_surfel_motion():
    from recon4d.render.types import Cameras, Surfels
    from recon4d.train.flow import render_flow

    means = torch.tensor([[0.0, 0.0, 2.0], [0.3, 0.2, 2.5]])
    quats = torch.tensor([[1.0, 0, 0, 0], [1.0, 0, 0, 0]])
    surfels = Surfels(means, quats, torch.full((2, 2), 0.08), torch.tensor([0.99, 0.99]),
                      torch.zeros(2, 1, 3))
    shift = torch.tensor([[0.05, 0.0, 0.0], [0.0, -0.04, 0.0]])
    cams = Cameras(torch.eye(4)[None], torch.tensor([[[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]]]), 64, 64)
    flow, alpha = render_flow(surfels, means + shift, cams)
    # Pixel at the first surfel's centre moves by fx * dx / z; the second one's by fy * dy / z.
    assert alpha[32, 32] > 0.9 and alpha[36, 39] > 0.9
    assert torch.allclose(flow[32, 32], torch.tensor([60 * 0.05 / 2.0, 0.0]), atol=1e-3)
    assert torch.allclose(flow[36, 39], torch.tensor([0.0, -60 * 0.04 / 2.5]), atol=1e-3)


def test_rendered_flow_includes_the_camera_motion():
    """A still surfel seen by a camera that moves between the frames moves in the image (the
    video's flow shows it); the rendered flow takes each frame's own camera."""
    from recon4d.render.types import Cameras, Surfels
    from recon4d.train.flow import render_flow

    means = torch.tensor([[0.0, 0.0, 2.0]])
    surfels = Surfels(means, torch.tensor([[1.0, 0, 0, 0]]), torch.full((1, 2), 0.08),
                      torch.tensor([0.99]), torch.zeros(1, 1, 3))
    K = torch.tensor([[[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]]])
    moved = torch.eye(4)[None].clone()
    moved[0, 0, 3] = 0.05  # the camera steps 0.05 to its left: the point moves right
    flow, _ = render_flow(surfels, means, Cameras(torch.eye(4)[None], K, 64, 64),
                          cameras_j=Cameras(moved, K, 64, 64))
    assert torch.allclose(flow[32, 32], torch.tensor([60 * 0.05 / 2.0, 0.0]), atol=1e-3)


def _trainer_at_full_stage(ball, tmp_path, **overrides):
    """A Trainer on the ball dataset initialised straight into the full stage."""
    from recon4d.data.dataset import load_dataset
    from recon4d.train.trainer import Trainer

    config = _tiny(coarse_surfels=0, **{"full.steps": 4, "checkpoint_every": 100, **overrides})
    trainer = Trainer(load_dataset(ball), RunDir(tmp_path / "direct").create(),
                      resolve_for_dataset(config, 32, 32, 8))
    trainer.initialise()
    return trainer


def test_the_flow_term_renders_frame_f_plus_1_through_its_own_camera(ball, tmp_path, monkeypatch):
    import recon4d.train.flow as flow_module

    trainer = _trainer_at_full_stage(ball, tmp_path)
    trainer.flow = torch.zeros(trainer.dataset.num_frames - 1, 32, 32, 2)
    seen = {}

    def spy(surfels, means_j, cameras, backend="auto", span=None, cameras_j=None):
        seen["cameras_j"] = cameras_j
        return torch.zeros(32, 32, 2, requires_grad=True), torch.ones(32, 32)

    monkeypatch.setattr(flow_module, "render_flow", spy)
    with torch.no_grad():  # a different camera at frame 4 than at frame 3
        trainer.model.base_viewmats[4, 0, 3] += 0.1
    surfels, _ = trainer.model.warped_state(trainer.times[3])
    trainer._flow_term(surfels, 3, 1.0, torch.ones(32, 32))
    assert torch.equal(seen["cameras_j"].viewmats, trainer.model.cameras([4]).viewmats)


@pytest.mark.parametrize("scale", [1.0, 0.5, 0.25])
def test_the_flow_term_is_in_pixels_of_the_dataset_at_any_stage_scale(ball, tmp_path, monkeypatch,
                                                                    scale):
    """A motion of 2 px of the dataset's frames is 2 * scale px at the stage's resolution; the
    term reads 2 at every scale (it read 2 * scale, so the coarse stage felt half the weight)."""
    import recon4d.train.flow as flow_module

    trainer = _trainer_at_full_stage(ball, tmp_path)
    trainer.flow = torch.zeros(trainer.dataset.num_frames - 1, 32, 32, 2)
    size = round(32 * scale)

    def uniform_motion(surfels, means_j, cameras, backend="auto", span=None, cameras_j=None):
        assert cameras.width == size
        flow = torch.zeros(size, size, 2)
        flow[..., 0] = 2.0 * scale
        return flow, torch.ones(size, size)

    monkeypatch.setattr(flow_module, "render_flow", uniform_motion)
    surfels, _ = trainer.model.warped_state(trainer.times[3])
    term = trainer._flow_term(surfels, 3, scale, torch.ones(size, size))
    assert float(term) == pytest.approx(2.0, rel=1e-5)


def test_depth_distortion_is_counted_in_object_sizes(ball, tmp_path):
    """The same render scores the same distortion term at any scene scale: the term is over
    the object's half-size squared, like the other geometric terms."""
    trainer = _trainer_at_full_stage(ball, tmp_path)
    stage = dataclasses.replace(trainer.config.full, losses={"distortion": 1.0})
    _, small, _ = trainer.compute_losses([0], stage, 1.0)
    trainer.extent *= 2.0
    _, large, _ = trainer.compute_losses([0], stage, 1.0)
    assert small["distortion"] > 0
    assert large["distortion"] == pytest.approx(small["distortion"] / 4.0, rel=1e-4)


def test_a_down_weighted_frame_weighs_less_in_every_term_on_its_data(ball, tmp_path):
    """The robust weight scaled the photometric term only: a distorted frame's mask (and flow,
    depth) still pulled at full weight. The render's own regularisers are not the frame's data."""
    trainer = _trainer_at_full_stage(ball, tmp_path)
    stage = dataclasses.replace(trainer.config.full,
                                losses={"mask": 1.0, "normal": 1.0, "distortion": 1.0})
    _, full, _ = trainer.compute_losses([0], stage, 1.0)
    # Frame 0 has stayed 10x worse than the others: weight (3 x median / its loss)^2 = 0.09.
    trainer.robust.ema[:] = 1.0
    trainer.robust.ema[0] = 10.0 * trainer.config.robust_tolerance / 3.0
    weight = float(trainer.robust.weights([0])[0])
    assert weight < 0.5
    _, down, _ = trainer.compute_losses([0], stage, 1.0)
    assert down["mask"] == pytest.approx(weight * full["mask"], rel=1e-5)
    assert down["photo"] == pytest.approx(weight * full["photo"], rel=1e-5)
    assert down["normal"] == pytest.approx(full["normal"], rel=1e-5)
    assert down["distortion"] == pytest.approx(full["distortion"], rel=1e-5)


def test_skinning_smoothness_runs_without_rigidity(ball, tmp_path):
    """It shares the rigidity term's neighbour rows, and was skipped with rigidity off."""
    trainer = _trainer_at_full_stage(ball, tmp_path)
    stage = dataclasses.replace(trainer.config.full, losses={"skin_smooth": 0.01, "rigidity": 0.0})
    _, values, _ = trainer.compute_losses([0], stage, 1.0)
    assert "skin_smooth" in values and np.isfinite(values["skin_smooth"])


def test_bone_smoothness_samples_evenly_spaced_times_inside_the_clip(ball, tmp_path, monkeypatch):
    """Clamping t +- dt at the clip's ends made steady motion look like a stop."""
    trainer = _trainer_at_full_stage(ball, tmp_path)
    bones = trainer.model.warp.bones
    times = []
    real = bones.motion_params
    monkeypatch.setattr(bones, "motion_params", lambda t: (times.append(float(t)), real(t))[1])
    stage = dataclasses.replace(trainer.config.full, losses={"bone_smooth": 1.0})
    triples = []
    for _ in range(30):
        times.clear()
        trainer.compute_losses([0], stage, 0.5)
        triples.append(times[-3:])  # the term's three samples come after the frame's render
    triples = np.array(triples)
    assert len(triples) == 30
    assert (triples >= 0).all() and (triples <= 1).all()
    assert np.allclose(triples[:, 1] - triples[:, 0], 1 / 7) and np.allclose(
        triples[:, 2] - triples[:, 1], 1 / 7)


def test_gradients_of_frozen_parameters_do_not_pile_up(ball, tmp_path):
    """A stage that freezes the surfels leaves their parameters out of the optimizer; their
    gradients were never cleared and summed over steps into the densification statistics."""
    trainer = _trainer_at_full_stage(ball, tmp_path, **{"full.train_canonical": False})
    assert "means" not in {g["name"] for g in trainer.optimizer.param_groups}
    trainer.model.canonical.means.grad = torch.full_like(trainer.model.canonical.means, 1e6)
    trainer.train_step()
    grad = trainer.model.canonical.means.grad
    assert grad is None or float(grad.abs().max()) < 1e3


def test_the_fit_reports_the_held_out_psnr_that_eval_measures(tmp_path):
    """Over a grey background the fit's own held-out figure (metrics.json "fit") was taken
    over that grey, `recon4d eval` over white: the parrot's read 25.16 and 25.00 dB."""
    from recon4d.eval import evaluate_run

    grey = make_ball_dataset(tmp_path / "grey", background=(0.6, 0.6, 0.6))
    config = _tiny(coarse_surfels=0, **{"full.steps": 3, "checkpoint_every": 100})
    run_dir = fit(grey, tmp_path / "run", config=config)
    own = RunDir(run_dir).read_metrics()["fit"]["heldout_psnr"]
    measured = evaluate_run(run_dir)["summary"]["psnr_heldout"]
    assert own == pytest.approx(measured, abs=0.02)


def test_config_overrides_and_json_round_trip():
    config = apply_overrides(preset("cpu-fast"), {"full.losses.normal": 0.0, "model.blend": "lbs",
                                                  "coarse_surfels": 0})
    assert config.full.losses["normal"] == 0.0 and config.full.losses["photo"] == 1.0
    assert config.model.blend == "lbs" and config.total_steps == config.full.steps
    again = config_from_dict(json.loads(json.dumps(_jsonable(config))))
    assert again == config
    with pytest.raises(ValueError, match="full.stepz"):
        apply_overrides(config, {"full.stepz": 3})


def test_a_recorded_loss_set_resumes_as_recorded():
    """config.json's stage losses are taken whole on resume: a fit built without some preset
    losses (Python API) does not gain them back from the preset (it gained 13 before)."""
    config = apply_overrides(preset("cpu-fast"), {"model.blend": "lbs"})
    config = dataclasses.replace(config, full=dataclasses.replace(config.full, losses={"photo": 1.0}),
                                 coarse=dataclasses.replace(config.coarse, lr_scales={}))
    again = config_from_dict(json.loads(json.dumps(_jsonable(config))))
    assert again.full.losses == {"photo": 1.0} and again == config


@pytest.mark.parametrize("overrides, expected", [
    ({"checkpoint_every": 0}, "checkpoint_every must be a whole number 1 or more"),
    ({"log_every": 0}, "log_every must be a whole number 1 or more"),
    ({"strategy.every": 0}, "strategy.every must be a whole number 1 or more"),
    ({"full.frames_per_step": 0}, "full.frames_per_step must be a whole number 1 or more"),
    ({"full.losses.phot": 2.0}, "full.losses.phot is not a loss (known: between, "),
    ({"coarse.lr_scales": {"mean": 10.0}}, "coarse.lr_scales.mean is not a parameter group"),
    ({"full.lr_scales": {"means": -1.0}}, "full.lr_scales.means must be a number 0 or more"),
    ({"lr.sh_dc": -0.01}, "lr.sh_dc must be a number 0 or more"),
    ({"full.lr_scale": float("nan")}, "full.lr_scale must be a number 0 or more"),
])
def test_settings_that_cannot_work_are_refused_before_the_fit(ball, tmp_path, overrides, expected):
    """Each of these used to pass: a zero cadence divided by zero some steps in, a misspelt
    loss or group did nothing, a negative rate dropped its group (docs/fit.md)."""
    assert config_problem(preset("cpu-fast")) is None
    with pytest.raises(UserError, match="fix the option") as caught:
        fit(ball, tmp_path / "run", preset="test", overrides=overrides)
    assert expected in str(caught.value)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_stage_lr_scales_multiply_one_group_in_that_stage_only(ball, tmp_path):
    from recon4d.data.dataset import load_dataset
    from recon4d.train.trainer import Trainer

    config = resolve_for_dataset(_tiny(**{"coarse.lr_scales": {"root_rot": 10.0}}), 32, 32, 8)
    assert config_from_dict(json.loads(json.dumps(_jsonable(config)))) == config
    trainer = Trainer(load_dataset(ball), RunDir(tmp_path / "run").create(), config)
    trainer.initialise()
    rates = {g["name"]: g["lr"] for g in trainer.optimizer.param_groups}
    assert trainer.stage_name == "coarse"
    assert rates["root_rot"] == pytest.approx(10.0 * config.lr.root_rot * config.coarse.lr_scale)
    assert rates["root_offsets"] == pytest.approx(config.lr.root_offsets * trainer.extent
                                                  * config.coarse.lr_scale)
    full = {g["name"]: g["lr"] for g in trainer._build_optimizer(config.full).param_groups}
    assert full["root_rot"] == pytest.approx(config.lr.root_rot * config.full.lr_scale)


def test_pruning_never_removes_more_than_half_nor_a_lone_surfel():
    for n, dropped in ((1, 1), (3, 2)):
        canon = CanonicalSurfels.from_points(torch.randn(n, 3), torch.randn(n, 3), torch.rand(n, 3),
                                             0.05)
        with torch.no_grad():
            canon.opacity_logits[:dropped] = -10.0
        strategy = DensifyPrune(StrategyConfig(start=0.0, every=1), extent=1.0)
        assert not strategy.prune(canon, None) and len(canon) == n


def test_upsampling_to_no_more_surfels_leaves_them_untouched():
    from recon4d.train.strategy import upsample

    canon = CanonicalSurfels.from_points(torch.randn(40, 3), torch.randn(40, 3), torch.rand(40, 3), 0.05)
    before = canon.means.detach().clone()
    upsample(canon, 30, torch.Generator().manual_seed(0))
    assert torch.equal(canon.means.detach(), before)
    upsample(canon, 160, torch.Generator().manual_seed(0))
    assert len(canon) == 160


def test_budgets_scale_with_image_area_once():
    base = preset("cpu-fast")
    same = scale_for_resolution(base, 128, 128)
    assert same.full.steps == base.full.steps and same.resolution_scaling == 1.0
    big = scale_for_resolution(base, 256, 256)  # 4x the area, capped at 2x the budget
    assert big.full.steps == 2 * base.full.steps
    assert big.model.num_surfels == 2 * base.model.num_surfels
    assert big.strategy.max_surfels == 2 * base.strategy.max_surfels
    assert scale_for_resolution(big, 256, 256) == big  # a resumed run does not grow again
    wide = scale_for_resolution(base, 192, 128)  # 1.5x the area: grows by the area alone
    assert wide.full.steps == round(1.5 * base.full.steps)
    detailed = scale_for_resolution(dataclasses.replace(base, resolution_scaling=3.0), 256, 256)
    assert detailed.full.steps == 3 * base.full.steps
    assert detailed.model.num_surfels == 3 * base.model.num_surfels


def test_steps_grow_with_the_training_frames_once():
    from recon4d.train.config import FRAMES_REFERENCE, scale_for_frames

    base = preset("cpu-fast")
    short = scale_for_frames(base, 32)  # 24 training frames: the reference, no change
    assert short.full.steps == base.full.steps and short.frames_scaling == 1.0
    assert scale_for_frames(base, 48).full.steps == round(base.full.steps * 36 / FRAMES_REFERENCE)
    long = scale_for_frames(base, 70)  # 53 training frames, capped at 2x
    assert long.full.steps == 2 * base.full.steps
    assert long.coarse.steps == base.coarse.steps and long.model == base.model
    every = dataclasses.replace(base, all_frames=True)
    assert scale_for_frames(every, 40).full.steps == round(base.full.steps * 40 / FRAMES_REFERENCE)
    resolved = resolve_for_dataset(base, 256, 256, 70)
    assert resolved.full.steps == 4 * base.full.steps  # 2x for the area, 2x for the frames
    assert resolve_for_dataset(resolved, 256, 256, 70) == resolved
    # With 3x allowed for the area (--detail 3) the 4x budget caps the product: the frames'
    # 2x is taken first, which leaves 2x for the area (not 3x).
    detail = dataclasses.replace(base, resolution_scaling=3.0)
    capped = resolve_for_dataset(detail, 256, 256, 70)
    assert capped.full.steps == 4 * base.full.steps
    assert capped.strategy.max_surfels == 2 * base.strategy.max_surfels
    assert resolve_for_dataset(capped, 256, 256, 70) == capped
    # 36 training frames: 1.5x for the frames leaves 4 / 1.5 for the area.
    mid = resolve_for_dataset(detail, 256, 256, 48)
    assert mid.full.steps == round(round(base.full.steps * 4 / 1.5) * 1.5)
    assert mid.model.num_surfels == round(base.model.num_surfels * 4 / 1.5)
    assert resolve_for_dataset(detail, 256, 256, 32).full.steps == 3 * base.full.steps


def _jsonable(config):
    from recon4d.rundir import to_jsonable

    return to_jsonable(config)


def test_fit_refuses_to_overwrite_a_finished_run(ball, tmp_path):
    config = _tiny(coarse_surfels=0, **{"full.steps": 1})
    fit(ball, tmp_path / "run", config=config)
    with pytest.raises(UserError, match="already holds a fit"):
        fit(ball, tmp_path / "run", config=config)


def test_frames_are_visited_in_shuffled_epochs(ball, tmp_path):
    """Every training frame comes up once per pass (no frame starved by chance), in a
    shuffled order, and held-out frames never."""
    config = _tiny(coarse_surfels=0, **{"full.steps": 18, "checkpoint_every": 100})
    run_dir = fit(ball, tmp_path / "epochs", config=config)
    steps = [r for r in RunDir(run_dir).read_metrics_log() if "frames" in r and r["stage"] == "full"]
    visited = [f for r in steps for f in r["frames"]]
    train = [i for i in range(8) if i % 4 != 2]
    assert len(visited) == 18
    passes = [visited[i:i + len(train)] for i in range(0, 18, len(train))]
    assert all(sorted(p) == train for p in passes)
    assert passes[0] != passes[1] or passes[1] != passes[2]  # shuffled anew each pass


def test_flow_prior_never_reaches_into_held_out_frames(ball, tmp_path, monkeypatch):
    """The flow f -> f+1 is computed from both frames' pixels: with f+1 held out, using it
    would train on a test frame."""
    from recon4d.data.dataset import Dataset
    from recon4d.train import trainer as trainer_mod

    def fake_flow(self):
        shape = (self.num_frames - 1, self.height, self.width, 2)
        return np.zeros(shape, np.float32), np.zeros(shape, np.float32)

    used = []

    def record(self, surfels, f, scale, mask):
        used.append(f)
        return surfels.means.sum() * 0.0

    monkeypatch.setattr(Dataset, "load_flow", fake_flow)
    monkeypatch.setattr(trainer_mod.Trainer, "_flow_term", record)
    config = _tiny(coarse_surfels=0, **{"full.steps": 24, "full.losses": {"flow": 1.0},
                                        "checkpoint_every": 100})
    fit(ball, tmp_path / "flow", config=config)
    assert used, "the flow term should run"
    assert all((f + 1) % 4 != 2 and f % 4 != 2 for f in used)


def test_time_frequencies_follow_the_clip_length(ball, tmp_path):
    from recon4d.train.config import auto_time_freqs

    assert [auto_time_freqs(n) for n in (8, 21, 24, 32, 70)] == [8, 8, 8, 11, 24]
    config = _tiny(coarse_surfels=0, **{"full.steps": 1, "model.time_freqs": 0, "checkpoint_every": 100})
    run_dir = fit(ball, tmp_path / "auto", config=config)
    assert RunDir(run_dir).read_config()["model"]["time_freqs"] == 8  # recorded resolved
    assert load_run(run_dir).spec["num_freqs"] == 8


def test_between_frames_term_runs_in_the_fit_and_pulls_toward_the_spline(ball, tmp_path):
    """With the weight on, the term is computed every step, stays finite, and its gradient moves
    the mid-interval positions toward the keyframes' spline (the term shrinks under it)."""
    from recon4d.data.dataset import load_dataset
    from recon4d.train.trainer import Trainer

    config = _tiny(coarse_surfels=0, **{"full.steps": 6, "full.losses": {"between": 100.0},
                                        "between_still": 0.0, "checkpoint_every": 100})
    run_dir = fit(ball, tmp_path / "between", config=config)
    steps = [r for r in RunDir(run_dir).read_metrics_log() if r.get("stage") == "full"]
    assert len(steps) == 6 and all(np.isfinite(r["between"]) for r in steps)

    trainer = Trainer(load_dataset(ball), RunDir(tmp_path / "direct"),
                      resolve_for_dataset(config, 32, 32, 8))
    trainer.initialise()
    with torch.no_grad():  # bend the bones' motion so the term has something to remove
        for p in trainer.model.warp.bones.parameters():
            p.add_(0.05 * torch.randn_like(p))
    params = list(trainer.model.warp.bones.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    values = []
    for _ in range(40):
        trainer.generator.manual_seed(0)
        loss = trainer._between_term()
        values.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert values[0] > 0 and values[-1] < 0.5 * values[0]


def test_between_gate_pulls_still_surfels_only(ball, tmp_path, monkeypatch):
    """With ``between_still`` the term counts only surfels that hold still between the two
    training frames; without it every surfel counts. The fake motion: every surfel bends off
    its keyframe positions by the same amount between training frames, odd rows also travel
    fast along x (uniform motion, which the spline reproduces exactly)."""
    from recon4d.data.dataset import load_dataset
    from recon4d.train.trainer import Trainer

    config = _tiny(coarse_surfels=0, **{"full.steps": 1, "checkpoint_every": 100})
    trainer = Trainer(load_dataset(ball), RunDir(tmp_path / "gate"),
                      resolve_for_dataset(config, 32, 32, 8))
    trainer.initialise()
    extent = trainer.extent
    keys = [float(k) for k in trainer.times[trainer.train_frames]]
    calls = []

    def bend(t):
        return min(abs(t - k) for k in keys) * extent  # 0 at every training frame

    def fake_deformed_means(rows, t):
        t = float(t)
        calls.append((rows, t))
        out = torch.zeros(len(rows), 3)
        out[:, 1] = bend(t)
        out[rows % 2 == 1, 0] = 10 * extent * t
        return out

    monkeypatch.setattr(trainer.model, "deformed_means", fake_deformed_means)
    losses = {}
    for gate in (0.0, 0.01):
        trainer.config.between_still = gate
        trainer.generator.manual_seed(0)
        losses[gate] = float(trainer._between_term())
        rows, t = calls[-1]
        assert bend(t) > 0  # the term was evaluated between two training frames
    still = (rows % 2 == 0).float()
    assert 0.2 < float(still.mean()) < 0.8
    assert losses[0.0] == pytest.approx(bend(t) ** 2, rel=1e-4)
    assert losses[0.01] == pytest.approx(float(still.mean()) * bend(t) ** 2, rel=1e-4)


def test_init_profile_auto_is_round_without_depth_maps_and_linear_with_them(ball, tmp_path,
                                                                           monkeypatch):
    """The fixed-camera init inflates the silhouette with a round section unless the dataset
    carries user depth maps (docs/fit.md has the measurements behind the rule)."""
    import shutil

    import recon4d.train.trainer as trainer_module
    from recon4d.data.depth import attach_depth

    used = []
    real = trainer_module.init_from_masks

    def recording(*args, **kwargs):
        used.append(kwargs["profile"])
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_module, "init_from_masks", recording)
    config = _tiny(coarse_surfels=0, **{"full.steps": 1, "checkpoint_every": 100})
    fit(ball, tmp_path / "plain", config=config)
    with_maps = shutil.copytree(ball, tmp_path / "with_maps")
    attach_depth(with_maps, np.full((8, 32, 32), 2.5, np.float32), "depth", source="test")
    fit(with_maps, tmp_path / "mapped", config=apply_overrides(config, {"full.losses.depth": 0.1}))
    fit(ball, tmp_path / "forced", config=apply_overrides(config, {"model.init_profile": "linear"}))
    assert used == ["round", "linear", "linear"]


def test_a_second_sigterm_stops_at_once_with_the_sigterm_status():
    """The second signal used to raise a bare KeyboardInterrupt: exit 130 for a SIGTERM."""
    import signal as signals

    from recon4d.errors import Interrupted
    from recon4d.train.stop import StopRequests

    with StopRequests() as stop:
        os.kill(os.getpid(), signals.SIGTERM)
        assert stop.signum == signals.SIGTERM
        with pytest.raises(Interrupted) as caught:
            os.kill(os.getpid(), signals.SIGTERM)
    assert caught.value.exit_code == 143
