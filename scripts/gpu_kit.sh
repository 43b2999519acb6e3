#!/usr/bin/env bash
# Prepare, on a machine with network access, what the GPU check (benchmarks/gpu_session.sh) needs
# on a lent CUDA machine that can fetch nothing: cp312 wheels of the packages its image lacks
# (.whl/) and the 32-frame 512x512 clip, ingested (.gpu_kit/jay512). Both folders are ignored by
# git and travel with the device call's `carry`. Together about 46 MB (the call's limit is 64 MiB).
# Usage: bash scripts/gpu_kit.sh            (needs .venv from scripts/setup.sh and ../shared)
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[gpu_kit] $*" >&2; }

# The device image (Python 3.12, torch 2.11+cu130) has numpy, scipy, opencv, scikit-image, rich,
# jaxtyping, ninja, pytest, pillow, imageio, typing-inspect and wrapt; these are what it lacks
# (typing-extensions too: typeguard needs >= 4.14, newer than the image may hold).
# Versions are the ones tested here; gsplat is pure Python and JIT-compiles its kernels there.
WHEELS=(av==18.1.0 tyro==1.0.17 typeguard==4.6.1 docstring-parser==0.18.0 trimesh==5.2.0
        pygltflib==1.16.5 dataclasses-json==0.6.7 marshmallow==3.26.2 Deprecated==1.3.1
        natsort==8.4.0 fast-simplification==0.2.0 gsplat==1.5.3 typing-extensions==4.16.0)
PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done
mkdir -p .whl
log "downloading ${#WHEELS[@]} cp312 wheels into .whl/"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}" 2>&1 | grep -v "is ignored: it is neither" || true

CLIP=../shared/data/clips/pecking_blue_jay_rgba
if [[ ! -d .gpu_kit/jay512 ]]; then
  [[ -d $CLIP ]] || { log "error: $CLIP not found: run this from a checkout with ../shared beside it"; exit 2; }
  mkdir -p .gpu_kit
  log "ingesting $CLIP at 512x512 (32 frames, no flow: the fit does not use it by default)"
  .venv/bin/recon4d ingest "$CLIP" --out .gpu_kit/jay512 --resolution 512 --no-flow
fi
log "ready: $(du -sh .whl | cut -f1) of wheels, $(du -sh .gpu_kit | cut -f1) of data"
log "device calls: carry [\".whl\", \".gpu_kit\"], commands 'bash benchmarks/gpu_session.sh fit'" \
    "then 'bash benchmarks/gpu_session.sh tests' (see docs/gpu.md)"
