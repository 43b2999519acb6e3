#!/usr/bin/env bash
# The prepared GPU check, for a session lent a CUDA machine that can fetch nothing (docs/gpu.md).
# Prepare first where there is network: bash scripts/gpu_kit.sh  (-> .whl/ and .gpu_kit/)
# Then one device call per step, each carrying [".whl", ".gpu_kit"]:
#   bash benchmarks/gpu_session.sh fit     gpu-quality fit + export + eval of the 32-frame 512x512
#                                          clip, timed (issue: fit + export <= 5 min on one H100)
#   bash benchmarks/gpu_session.sh tests   the CUDA tests (native kernel, gsplat parity) and the
#                                          renderer benchmark on the GPU
# Everything it reports lands in $OUT (the device tool's return folder; runs/gpu_session when unset):
# session.log, device.txt, the step's logs and one JSON summary; at most 8 files.
# Knobs (environment): PYTHON, FIT_LIMIT (s, default 420), FIT_ARGS (extra `recon4d fit` options,
# e.g. "--steps 4000"), FIT_DEVICE (cuda; cpu for a dry run here), DATASET (default
# .gpu_kit/jay512), BENCH_ARGS (extra bench_render.py options).
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:?usage: bash benchmarks/gpu_session.sh fit|tests}
OUT=${OUT:-$PWD/runs/gpu_session}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
log() { echo "[gpu_session $(date +%T)] $*" | tee -a "$OUT/session.log" >&2; }
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

prepare() {
  if ! $PY -c "import tyro, trimesh, pygltflib, natsort, av, fast_simplification" 2>/dev/null; then
    [[ -d .whl ]] || { log "error: packages missing and no .whl/: run scripts/gpu_kit.sh and carry .whl"; exit 2; }
    log "installing $(ls .whl/*.whl | wc -l) wheels into /tmp/site"
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl || { log "error: wheel install failed"; exit 2; }
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  # pyproject installs cuda/, scenes/ and viewer/ as recon4d.cuda, .scenes and .viewer; on a
  # checkout that is not pip-installed, links inside recon4d/ (ignored by git) do the same.
  if ! $PY -c "import recon4d.cuda, recon4d.scenes" 2>/dev/null; then
    for d in cuda scenes viewer; do [[ -e recon4d/$d ]] || ln -s "../$d" "recon4d/$d"; done
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  export RECON4D_EXTENSIONS_DIR=${RECON4D_EXTENSIONS_DIR:-/tmp/recon4d_extensions}
  # Hopper only (H100/H200): one architecture compiles faster than torch's default list.
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  export MAX_JOBS=${MAX_JOBS:-16}
  {
    nvidia-smi 2>&1 | head -15
    $PY - <<'EOF'
import sys, torch
print("python", sys.version.split()[0], "| torch", torch.__version__, "| cuda", torch.version.cuda)
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none")
EOF
    echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  } > "$OUT/device.txt" 2>&1
  $PY -c "import recon4d.cuda, tyro, trimesh, av" || { log "error: recon4d does not import"; exit 2; }
  log "ready: $(grep -E '^(python|device)' "$OUT/device.txt" | tr '\n' ' ')"
}

step_fit() {
  local data=${DATASET:-.gpu_kit/jay512} run=/tmp/gpu_session_fit
  [[ -f $data/manifest.json ]] || { log "error: no dataset at $data: run scripts/gpu_kit.sh and carry .gpu_kit"; exit 2; }
  rm -rf "$run"
  log "fit: $data, preset gpu-quality, limit ${FIT_LIMIT:-420} s ${FIT_ARGS:-}"
  local t0 t1 t2 t3 rc_fit rc_export rc_eval
  t0=$(now)
  # shellcheck disable=SC2086
  timeout -s INT "${FIT_LIMIT:-420}" $PY -m recon4d fit "$data" --out "$run" --preset gpu-quality \
    --device "${FIT_DEVICE:-cuda}" ${FIT_ARGS:-} > "$OUT/fit.log" 2>&1
  rc_fit=$?
  t1=$(now)
  log "fit rc $rc_fit in $(since "$t0" "$t1") s"
  $PY -m recon4d export "$run" --format glb-skin video > "$OUT/export.log" 2>&1
  rc_export=$?
  t2=$(now)
  log "export rc $rc_export in $(since "$t1" "$t2") s"
  $PY -m recon4d eval "$run" --json > "$OUT/eval.json" 2> "$OUT/eval.log"
  rc_eval=$?
  t3=$(now)
  log "eval rc $rc_eval in $(since "$t2" "$t3") s"
  RUN=$run T0=$t0 T1=$t1 T2=$t2 RC_FIT=$rc_fit RC_EXPORT=$rc_export RC_EVAL=$rc_eval \
    $PY - "$OUT/fit_summary.json" <<'EOF'
import json, os, sys
from pathlib import Path
run = Path(os.environ["RUN"])
def load(path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
records = []
try:
    records = [json.loads(line) for line in (run / "logs" / "metrics.jsonl").read_text().splitlines() if line.strip()]
except OSError:
    pass
t0, t1, t2 = (float(os.environ[k]) for k in ("T0", "T1", "T2"))
summary = {
    "fit_seconds": round(t1 - t0, 1), "export_seconds": round(t2 - t1, 1),
    "fit_plus_export_seconds": round(t2 - t0, 1),
    "rc": {k: int(os.environ[k]) for k in ("RC_FIT", "RC_EXPORT", "RC_EVAL")},
    "fit_metrics": load(run / "metrics.json"),
    "config": load(run / "config.json"),
    "last_log_records": records[-3:],
    "exported": sorted(str(p.relative_to(run)) for p in (run / "export").rglob("*") if p.is_file())
    if (run / "export").is_dir() else [],
}
Path(sys.argv[1]).write_text(json.dumps(summary, indent=2))
print(json.dumps({k: summary[k] for k in ("fit_seconds", "export_seconds", "fit_plus_export_seconds", "rc")}))
EOF
}

step_tests() {
  log "CUDA tests"
  timeout 330 $PY -m pytest -m cuda -q -p no:cacheprovider --continue-on-collection-errors tests \
    > "$OUT/pytest_cuda.log" 2>&1
  log "pytest rc $? ($(tail -1 "$OUT/pytest_cuda.log"))"
  log "renderer benchmark"
  timeout 200 $PY benchmarks/bench_render.py ${BENCH_ARGS:-} --out "$OUT/render_bench_cuda.json" > "$OUT/bench.log" 2>&1
  log "bench rc $?"
}

prepare
case $STEP in
  fit) step_fit ;;
  tests) step_tests ;;
  *) log "error: unknown step '$STEP' (fit or tests)"; exit 2 ;;
esac
