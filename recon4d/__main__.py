"""``python -m recon4d`` is the same as the ``recon4d`` command."""

import sys

from recon4d.cli.main import main

sys.exit(main())
