"""Load a fitted model from a run directory (its latest checkpoint)."""

from __future__ import annotations

from pathlib import Path

from recon4d.errors import UserError


def load_run(run_dir: str | Path, device: str = "cpu"):
    """The :class:`~recon4d.model.scene.DynamicSurfelModel` of ``run_dir``'s latest checkpoint.

    The checkpoint carries the model's construction spec (``model_spec``) and its state dict,
    loaded with ``torch.load(weights_only=True)``.

    Raises:
        UserError: when the run or its checkpoint is missing or damaged.
    """
    from recon4d.model.scene import DynamicSurfelModel
    from recon4d.rundir import RunDir
    from recon4d.utils.checkpoint import latest_checkpoint, load_checkpoint

    run = RunDir(run_dir).require()
    path = latest_checkpoint(run.checkpoints)
    if path is None:
        raise UserError(f"run '{run.root}' has no checkpoint yet: let 'recon4d fit' finish or "
                        "resume it with --resume")
    state = load_checkpoint(path, map_location=device)
    try:
        model = DynamicSurfelModel.from_state(state["model_spec"], state["model"])
    except (KeyError, RuntimeError, ValueError) as exc:
        raise UserError(f"checkpoint '{path}' does not hold a recon4d model ({exc}): fit again") from exc
    model.fit_step = int(state.get("step", 0))
    return model.to(device).eval()
