#!/usr/bin/env bash
# The GPU measurements of the speed issue, in few full calls of the device tool (one H100/H200;
# a session has 30 minutes of device time and 10 minutes per call):
#
#   bash benchmarks/gpu_session.sh check      ~3 min: tests/test_gpu.py (cuDNN path without weight
#                                             copies, one-chunk weights, bf16/fp16), ratios at batch 40
#   bash benchmarks/gpu_session.sh bench      ~8 min: ptb at batch 40 and 20 in fp32 and bf16 (ours
#                                             against plain, with memory), then 1/2/4/8 concurrent runs
#   bash benchmarks/gpu_session.sh train 9    ~9 min: the ptb preset trained for 9 minutes: seconds and
#                                             validation perplexity per epoch (a second call resumes it
#                                             while the machine is still warm)
#
# Before the first call, here: mkdir -p .gpu-data && cp -r ../shared/data/ptb .gpu-data/  (git-ignored),
# and name .gpu-data in the call's carry. The image's python3 has torch, pytest, hypothesis and tqdm;
# awdlstm runs from src/ without installing. Results go under $OUT (./gpu-out when unset), at most 8
# files. DEVICE=cpu PRESET=tiny runs the same steps on the CPU (a smoke test of this script).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-ptb}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 AWDLSTM_CACHE="$PWD/.gpu-data/cache"
log="$OUT/session.log"
{ date -Is; nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm --format=csv 2>/dev/null || true
  $PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} >>"$log" 2>&1

case "${1:-}" in
check)
    $PY -m pytest -q -p no:cacheprovider -rs -m gpu tests/test_gpu.py 2>&1 | tee -a "$log"
    $PY -m benchmarks.run --preset "$PRESET" --batch-size 40 --steps 30 --warmup 5 --device "$DEVICE" \
        --no-memory --out "$OUT" 2>&1 | tee -a "$log"
    ;;
bench)
    for bs in 40 20; do
        for precision in fp32 bf16; do
            [ "$DEVICE" = cpu ] && [ "$precision" != fp32 ] && continue
            $PY -m benchmarks.run --preset "$PRESET" --batch-size "$bs" --steps 50 --warmup 5 --device "$DEVICE" \
                --precision "$precision" --out "$OUT" 2>&1 | tee -a "$log" | tail -n 25
        done
    done
    $PY -m benchmarks.concurrent --preset "$PRESET" --batch-size 40 --runs 1,2,4,8 --seconds 30 --device "$DEVICE" \
        --out "$OUT" 2>&1 | tee -a "$log"
    ;;
train)
    minutes=${2:-9}
    run=runs/gpu-$PRESET  # checkpoints stay here (too large to come back); metrics go to $OUT
    if [ -f "$run/last.pt" ]; then
        $PY -m awdlstm train --out "$run" --resume --max-minutes "$minutes" --device "$DEVICE" --no-eval 2>&1 | tee -a "$log" | tail -n 5
    else
        $PY -m awdlstm train --preset "$PRESET" --data-root .gpu-data --out "$run" --max-minutes "$minutes" \
            --device "$DEVICE" --no-eval --set train.log_every=1000 2>&1 | tee -a "$log" | tail -n 5
    fi
    cp "$run/metrics.jsonl" "$OUT/metrics-$PRESET.jsonl"
    cp "$run/config.json" "$OUT/config-$PRESET.json"
    ;;
*)
    echo "usage: bash benchmarks/gpu_session.sh check|bench|train [MINUTES]" >&2
    exit 2
    ;;
esac
