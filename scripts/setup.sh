#!/usr/bin/env bash
# Create .venv and install recon4d with everything it needs. Safe to re-run: it skips work
# when nothing changed. Usage: bash scripts/setup.sh [--dev]
#   --dev  also the test tools: pytest, ray, usd-core, xatlas, the glTF validator (npm) and,
#          as root on Debian, chromium for the viewer test.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
[[ "${1:-}" == "--dev" ]] && DEV=1
PY=${PYTHON:-python3}
log() { echo "[setup] $*" >&2; }

if [[ ! -x .venv/bin/python ]]; then
  log "creating .venv with $($PY --version)"
  $PY -m venv .venv
fi
VPY=.venv/bin/python
STAMP=.venv/.recon4d-setup
WANT="$(cat pyproject.toml setup.py tools/node/package.json 2>/dev/null | sha256sum | cut -c1-16)-dev$DEV"
if [[ -f $STAMP && "$(cat $STAMP)" == "$WANT" ]]; then
  log "environment up to date (.venv)"
  exit 0
fi

# torch first: without a GPU take the CPU build (a bare 'torch' would pull a multi-GB CUDA build).
if ! $VPY -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "GPU found: installing torch (CUDA build) and gsplat"
    $VPY -m pip install -q torch 2>&1 | grep -v "is ignored: it is neither" || true
    EXTRA_GPU=",gpu"
  else
    log "no GPU: installing the CPU build torch==2.13.0"
    $VPY -m pip install -q torch==2.13.0 2>&1 | grep -v "is ignored: it is neither" || true
  fi
fi
EXTRAS=""
[[ $DEV == 1 ]] && EXTRAS="dev"
[[ -n "${EXTRA_GPU:-}" ]] && EXTRAS="${EXTRAS:+$EXTRAS}${EXTRA_GPU}"
EXTRAS="${EXTRAS#,}"
SPEC="."
[[ -n "$EXTRAS" ]] && SPEC=".[$EXTRAS]"
log "installing recon4d ($SPEC, editable)"
$VPY -m pip install -q -e "$SPEC" 2>&1 | grep -v "is ignored: it is neither" || true
$VPY -c "import recon4d, torch, numpy, av, cv2, tyro" || { log "install failed"; exit 1; }

if [[ $DEV == 1 ]]; then
  if command -v npm >/dev/null 2>&1 && [[ -f tools/node/package.json ]]; then
    log "installing the Khronos glTF validator (npm, tools/node)"
    (cd tools/node && npm install --silent --no-audit --no-fund >/dev/null 2>&1) \
      || log "npm install failed: glTF validation tests will skip"
  fi
  if ! command -v chromium >/dev/null 2>&1 && [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    log "installing Debian's chromium for the viewer screenshot test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || log "chromium install failed: the viewer browser test will skip"
  fi
fi
echo "$WANT" > $STAMP
log "done: $($VPY -c 'import torch; print("torch", torch.__version__)')"
