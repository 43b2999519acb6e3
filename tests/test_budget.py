"""The fit's time budget (recon4d/train/budget.py): the surfel growth it predicts is the
strategy's own, the plan respects the budget, and a fit with a budget shortens its full stage
once and records it."""

from __future__ import annotations

import json

import pytest
import torch

from recon4d.model.canonical import CanonicalSurfels
from recon4d.rundir import RunDir
from recon4d.train import fit
from recon4d.train.budget import Growth, plan_full_steps, remaining_seconds, surfel_counts
from recon4d.train.config import StrategyConfig
from recon4d.train.strategy import DensifyPrune
from test_train import ball  # noqa: F401  (the module-scoped dataset fixture)

GROWTH = Growth(cap=400, every=10, fraction=0.08, start=0.1, stop=0.7)


@pytest.mark.parametrize("done", [0, 37, 40])
def test_predicted_surfel_counts_are_the_strategys_growth(done):
    """Run the real DensifyPrune over a stage (every surfel has a gradient, none is pruned) and
    compare the surfel count each step renders with the prediction."""
    steps, n = 200, 200
    generator = torch.Generator().manual_seed(0)
    canonical = CanonicalSurfels.from_points(torch.randn(n, 3, generator=generator),
                                             torch.randn(n, 3, generator=generator),
                                             torch.rand(n, 3, generator=generator), 0.05)
    strategy = DensifyPrune(StrategyConfig(start=GROWTH.start, stop=GROWTH.stop,
                                           every=GROWTH.every, grow_fraction=GROWTH.fraction,
                                           max_surfels=GROWTH.cap), extent=1.0)
    strategy.reset(n)
    seen = []
    for local in range(steps):
        if local == done:
            start_count = len(canonical)
        seen.append(len(canonical))  # what step `local` renders
        canonical.means.grad = 0.1 + torch.rand(len(canonical), 3, generator=generator)
        strategy.after_backward(canonical)
        strategy.step(canonical, None, local, local / steps)
    predicted = surfel_counts(steps, done, start_count, GROWTH)
    assert predicted.tolist() == seen[done:]
    assert seen[-1] == GROWTH.cap and seen[0] == n   # the test covers growth and the cap


def test_the_plan_keeps_the_steps_that_fit_and_shortens_the_rest():
    args = dict(planned=1000, done=20, step_seconds=0.1, surfels=200, growth=GROWTH)
    everything = remaining_seconds(1000, 20, 0.1, 200, GROWTH)
    assert everything > 0.1 * 980  # growth makes later steps dearer than the steps now
    kept = plan_full_steps(seconds_left=everything + 1.0, **args)
    assert kept.steps == 1000 and not kept.shortened
    half = plan_full_steps(seconds_left=everything / 2, **args)
    assert half.shortened and 20 < half.steps < 1000
    assert half.predicted_seconds <= everything / 2
    assert remaining_seconds(half.steps + 1, 20, 0.1, 200, GROWTH) > everything / 2  # the most
    tighter = plan_full_steps(seconds_left=everything / 4, **args)
    assert tighter.steps < half.steps
    none_left = plan_full_steps(seconds_left=-5.0, **args)
    assert none_left.steps == 21  # one more step, then the end of the fit


def test_a_fit_with_a_short_budget_shortens_its_full_stage_once_and_records_it(
        ball, tmp_path, capsys):  # noqa: F811
    small = {"coarse.steps": 4, "full.steps": 400, "model.num_surfels": 200,
             "coarse_surfels": 50, "strategy.max_surfels": 300, "num_threads": 1,
             "checkpoint_every": 1000}
    run_dir = fit(ball, tmp_path / "short", preset="test",
                  overrides={**small, "time_budget_s": 0.5})
    err = capsys.readouterr().err
    assert "the full stage is shortened from 400 to" in err
    config = RunDir(run_dir).read_config()
    steps = config["full"]["steps"]
    assert 1 <= steps < 400 and config["time_budget_s"] == 0.5
    records = RunDir(run_dir).read_metrics_log()
    decision = [r["time_budget"] for r in records if "time_budget" in r]
    assert len(decision) == 1 and decision[0]["full_steps"] == steps
    assert records[-1]["final"] and records[-1]["step"] == 4 + steps
    assert json.loads((run_dir / "metrics.json").read_text())["fit"]["steps"] == 4 + steps

    generous = fit(ball, tmp_path / "long", preset="test",
                   overrides={**small, "full.steps": 40, "time_budget_s": 3600.0})
    assert "the planned 40 full-stage steps fit" in capsys.readouterr().err
    assert RunDir(generous).read_config()["full"]["steps"] == 40
    assert RunDir(generous).read_metrics_log()[-1]["step"] == 44


def test_a_budget_given_on_resume_past_the_timing_window_still_applies(
        ball, tmp_path, capsys):  # noqa: F811
    """A run stopped past the steps the budget times (full-stage steps 5-25), with no decision
    yet, times the steps from where it resumed and is shortened there (it used to run all its
    remaining steps with a warning, so a batch's budget did not hold across a restart)."""
    small = {"coarse.steps": 4, "full.steps": 60, "model.num_surfels": 200, "coarse_surfels": 50,
             "strategy.max_surfels": 300, "num_threads": 1, "checkpoint_every": 40}
    run_dir = tmp_path / "run"
    stop_at = {"step": 42}  # after the checkpoint at step 40

    def interrupt(step, model, record):
        if step + 1 == stop_at["step"]:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(ball, run_dir, preset="test", overrides=small, on_step=interrupt)
    capsys.readouterr()
    fit(ball, run_dir, preset="test", overrides={**small, "time_budget_s": 0.5}, resume=True)
    records = RunDir(run_dir).read_metrics_log()
    decisions = [r for r in records if "time_budget" in r]
    assert [r["step"] for r in decisions] == [60]           # timed over steps 40-60
    full_steps = decisions[0]["time_budget"]["full_steps"]
    assert full_steps < 60                                   # 20 steps alone outlast 0.5 s
    assert records[-1]["final"] and records[-1]["step"] == 4 + full_steps
    assert RunDir(run_dir).read_config()["full"]["steps"] == full_steps
