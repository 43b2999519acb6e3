"""``recon4d ingest``: turn a video, GIF, frame folder or transforms.json into a dataset directory."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import tyro

from recon4d.data.options import IngestOptions


@dataclass
class Config:
    """INPUT: mp4/webm/mov/mkv video, animated GIF, folder of PNG/JPG frames (RGB or RGBA), or a
    nerfstudio transforms.json. Masks (given > alpha > background keying), crop to the object,
    square, resize, times in [0, 1], camera init, optional DIS flow; a contact_sheet.png to check.
    Example: recon4d ingest clip.mp4 --out data/clip"""

    input: tyro.conf.Positional[Annotated[Path, tyro.conf.arg(metavar="INPUT")]]
    """Video, animated GIF, frame folder, transforms.json (or its folder); or a dataset (--to nerfstudio)."""

    out: Annotated[Path, tyro.conf.arg(metavar="DATASET_DIR")]
    """Directory to create (written atomically)."""

    to: Literal["dataset", "nerfstudio"] = "dataset"
    """Output format: a recon4d dataset, or a nerfstudio folder (transforms.json, images/, masks/)."""

    options: tyro.conf.OmitArgPrefixes[Annotated[IngestOptions, tyro.conf.arg(name="ingest")]] = (
        field(default_factory=IngestOptions))
    """How the input becomes a dataset."""


def run(config: Config) -> int:
    from recon4d.data.ingest import ingest
    from recon4d.utils.output_location import require_writable_output

    require_writable_output(config.out)
    if config.to == "dataset":
        ingest(config.input, config.out, config.options)
        return 0
    import shutil
    import tempfile

    from recon4d.data.dataset import is_dataset_dir
    from recon4d.data.nerfstudio import export_transforms
    from recon4d.errors import UserError
    from recon4d.utils import console

    if config.out.exists() and not config.options.overwrite:
        raise UserError(f"output '{config.out}' already exists: choose another --out or pass "
                        "--overwrite")
    if is_dataset_dir(config.input):
        path = export_transforms(config.input, config.out, overwrite=config.options.overwrite)
    else:
        config.out.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=f".tmp-{config.out.name}-ingest-",
                                        dir=config.out.parent))
        try:
            dataset = ingest(config.input, scratch / "dataset", config.options)
            path = export_transforms(dataset, config.out, overwrite=config.options.overwrite)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    console.info(f"nerfstudio folder: {path}")
    return 0
