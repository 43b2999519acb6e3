"""Evaluation: image metrics, geometry metrics and run-level evaluation (docs/scenes_eval.md).

``evaluate_run(run_dir, gt_dir=None) -> dict`` is the entry point (``recon4d eval``); the metric
functions in :mod:`.metrics` and :mod:`.geometry` are pure numpy and usable on their own.
"""

from __future__ import annotations


def evaluate_run(run_dir, gt_dir=None, **kwargs) -> dict:
    """Evaluate a fitted run; see :func:`recon4d.eval.evaluate.evaluate_run`."""
    from .evaluate import evaluate_run as _evaluate

    return _evaluate(run_dir, gt_dir, **kwargs)


__all__ = ["evaluate_run"]
