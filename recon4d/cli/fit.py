"""``recon4d fit``: not built yet (see the open issues)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Config:
    """This command is not available in this version yet."""


def run(config: Config) -> int:
    from recon4d.errors import UserError

    raise UserError("'recon4d fit' is not available in this version yet")
