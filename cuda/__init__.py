"""Sources of recon4d's native rasterisation kernels (C++ for CPU, CUDA for GPU).

Installed as ``recon4d.cuda``; :data:`SOURCE_DIR` is where ``torch.utils.cpp_extension`` finds them
in editable and wheel installs alike.
"""

from pathlib import Path

SOURCE_DIR = Path(__file__).resolve().parent
