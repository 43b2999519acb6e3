"""Package discovery only; all metadata lives in pyproject.toml.

`cuda/`, `scenes/` and `viewer/` sit at the top level (the product card's layout) but install as
`recon4d.cuda`, `recon4d.scenes` and `recon4d.viewer`, so editable and wheel installs resolve the
kernel sources, scene definitions and viewer the same way. setuptools' `packages.find` cannot
express that mapping together with discovery, hence this file.
"""

from setuptools import find_packages, setup

MAPPED = {"cuda": "recon4d.cuda", "scenes": "recon4d.scenes", "viewer": "recon4d.viewer"}

packages = find_packages(include=["recon4d", "recon4d.*"])
for folder, name in MAPPED.items():
    packages.append(name)
    packages += [f"{name}.{sub}" for sub in find_packages(where=folder)]

setup(packages=packages)
