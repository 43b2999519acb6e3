"""The ``recon4d`` command. Each subcommand is a module here with a ``Config`` dataclass (its
docstring and field docstrings are the ``--help``) and ``run(config) -> int | None``; modules
import nothing heavy at module level so ``--help`` stays fast."""
