#!/usr/bin/env bash
# Every GPU figure of issue 14 in one run, each section one JSON line in $OUT/gpu_all.jsonl:
#   setup          the device, python, torch, which wheels were carried, what is missing
#   gpu_extract    (1) the encoders' compute figures: audio-s per GPU-s, fraction of the measured bf16
#                  matmul peak, the fastest batch size; per encoder and all four (bench/gpu_extract.py)
#   gpu_stage      (2) EncodeStage batching by duration vs one clip per forward pass (bench/gpu_stage.py)
#   train_step     (3) a training step from cached features vs the four encoders inside the step,
#                  4B-shaped random LLM, bf16, peak GPU memory of each (bench/train.py)
#   loader_vs_step (4) clips/s the loader delivers vs clips/s a step consumes (bench/train.py)
# Each section has a time budget (seconds, enforced with `timeout`; the Python scripts also skip
# batch sizes or encoders that would not fit and name them). A section that would not fit in what is
# left of the whole budget is skipped, and its line says so. The GPU run fits in 8 minutes.
#
# On the device machine (bench/wheels.md says how the wheels travel):
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#     --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site || exit; bash bench/gpu_all.sh
# On a CPU, tiny sizes (what tests/test_gpu_bench.py runs):
#   bash bench/gpu_all.sh --device cpu --tiny --out /tmp/gpu-all
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEVICE=cuda
TINY=0
ENCODERS=whisper,w2vbert,muq,sslam
OUTDIR=${OUT:-/tmp/alarm-gpu-all}
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case $1 in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --encoders) ENCODERS=$2; shift 2 ;;
    --out) OUTDIR=$2; shift 2 ;;
    *) echo "usage: $0 [--device cuda|cpu] [--tiny] [--encoders LIST] [--out DIR]" >&2; exit 2 ;;
  esac
done

# The repository root is the package `alarm`: import it through a link named alarm.
LINKS=$(mktemp -d)
trap 'rm -rf "$LINKS"' EXIT
ln -s "$REPO" "$LINKS/alarm"
export PYTHONPATH="$LINKS${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false

mkdir -p "$OUTDIR"
RESULTS=$OUTDIR/gpu_all.jsonl
LOG=$OUTDIR/gpu_all.log
: >"$RESULTS"
: >"$LOG"
START=$(date +%s)

if [ "$TINY" = 1 ]; then
  TOTAL=900  # a shared 2-core CPU: generous, the sizes are tiny
  B_EXTRACT=240 B_STAGE=240 B_TRAIN=360
  EXTRACT_ARGS=(--preset tiny --clips 2 --seconds 4 --batch-sizes 1,2 --budget-s 200)
  STAGE_ARGS=(--preset tiny --clips 3 --seconds 6 --batch-size 2 --part-seconds 3 --budget-s 200)
  TRAIN_ARGS=(--clips 4 --steps 1 --rounds 1 --batch-clips 2 --workers 0)
else
  TOTAL=470  # under 8 minutes of device time, start-up of the script included
  B_EXTRACT=150 B_STAGE=100 B_TRAIN=200
  EXTRACT_ARGS=(--preset full-size-random --clips 192 --batch-sizes 8,16,32,64 --budget-s 130)
  STAGE_ARGS=(--preset full-size-random --clips 128 --batch-size 32 --budget-s 85)
  TRAIN_ARGS=(--clips 64 --steps 3 --rounds 1 --batch-clips 8 --workers 0,4)
fi
[ "$DEVICE" = cpu ] && XDEV=cpu || XDEV=cuda:0

# emit SECTION SECONDS RC FILE: the last JSON line of FILE, tagged, or a line saying why there is none.
emit() {
  "$PY" - "$@" "$TINY" >>"$RESULTS" <<'PYEOF'
import json, sys
section, seconds, rc, path, tiny = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
lines = [l for l in open(path).read().splitlines() if l.startswith("{")] if path != "-" else []
tag = {"section": section, "section_seconds": round(seconds, 1), "tiny": tiny == "1"}
if rc != 0 or not lines:
    why = "skipped: not enough of the time budget left" if rc == -1 else \
        f"timed out at its budget of {seconds:.0f} s" if rc in (124, 137) else f"failed (exit {rc}); see gpu_all.log"
    print(json.dumps({**tag, "bench": section, "skipped": why}))
    sys.exit()
row = json.loads(lines[-1])
if section != "train":
    print(json.dumps({**tag, **row}))
    sys.exit()
step = ["device", "preset", "encoders", "batch_clips", "step_s_cached", "step_s_encoder", "encoder_over_cached",
        "peak_mb_cached", "peak_mb_encoder", "peak_memory_kind"]
feed = ["device", "encoders", "clips", "batch_clips", "loader_clips_per_s_cold", "loader_clips_per_s_warm",
        "step_clips_per_s_cached", "loader_cold_vs_step", "loader_vs_raw_cold", "loader_vs_raw_warm", "stored_mb"]
print(json.dumps({**tag, "section": "train_step", "bench": "train_step", **{k: row.get(k) for k in step}}))
print(json.dumps({**tag, "section": "loader_vs_step", "bench": "loader_vs_step",
                  "loader_cold_over_step": row.get("loader_cold_vs_step"), **{k: row.get(k) for k in feed}}))
PYEOF
}

# section NAME BUDGET COMMAND...: run COMMAND under `timeout BUDGET` if it fits in what is left.
section() {
  local name=$1 budget=$2 out=$LINKS/$1.out
  shift 2
  local left=$((TOTAL - ($(date +%s) - START)))
  if [ "$budget" -gt "$left" ]; then
    echo "== $name: skipped, $left s left of $TOTAL, budget $budget" >>"$LOG"
    emit "$name" "$budget" -1 -
    return
  fi
  echo "== $name (budget $budget s): $*" >>"$LOG"
  local t0=$(date +%s.%N)
  timeout -k 10 "$budget" "$@" >"$out" 2>>"$LOG"
  local rc=$?
  local took=$("$PY" -c "import time; print(time.time() - $t0)")
  cat "$out" >>"$LOG"
  [ $rc -eq 124 ] || [ $rc -eq 137 ] && took=$budget
  emit "$name" "$took" "$rc" "$out"
}

section_setup() {
  "$PY" - "$DEVICE" "$REPO" <<'PYEOF'
import importlib.util, json, platform, sys, glob, os
device, repo = sys.argv[1], sys.argv[2]
import torch
row = {"section": "setup", "bench": "setup", "python": platform.python_version(), "torch": torch.__version__,
       "cuda_available": torch.cuda.is_available(),
       "device": torch.cuda.get_device_name(0) if device != "cpu" and torch.cuda.is_available() else "cpu",
       "wheels_carried": sorted(os.path.basename(p) for p in glob.glob(os.path.join(repo, ".whl", "*.whl"))),
       "missing": [m for m in ("zarr", "numcodecs", "google_crc32c", "soundfile", "soxr", "ray")
                   if importlib.util.find_spec(m) is None]}
print(json.dumps(row))
PYEOF
}
section_setup >>"$RESULTS" 2>>"$LOG" || echo '{"section": "setup", "bench": "setup", "skipped": "failed; see gpu_all.log"}' >>"$RESULTS"
[ "$DEVICE" = cpu ] || nvidia-smi >>"$LOG" 2>&1

section gpu_extract "$B_EXTRACT" "$PY" "$REPO/bench/gpu_extract.py" --device "$XDEV" --encoders "$ENCODERS" "${EXTRACT_ARGS[@]}"
section gpu_stage "$B_STAGE" "$PY" "$REPO/bench/gpu_stage.py" --device "$XDEV" --encoders "$ENCODERS" "${STAGE_ARGS[@]}"
section train "$B_TRAIN" "$PY" "$REPO/bench/train.py" --device "$DEVICE" --encoders "$ENCODERS" "${TRAIN_ARGS[@]}"

echo "== done in $(($(date +%s) - START)) s" >>"$LOG"
cat "$RESULTS"
