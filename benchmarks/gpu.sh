#!/usr/bin/env bash
# The GPU checks and measurements of awdlstm, from a clone on a machine with an NVIDIA GPU:
#
#   bash benchmarks/gpu.sh check          the GPU tests (pytest -m gpu) and a short training on CUDA
#                                         (a few hundred steps of the tiny model, evaluated): minutes
#   bash benchmarks/gpu.sh bench          benchmarks.run on the GPU: ptb at batch 40 and 20, fp32 and
#                                         bf16, with torch.compile; then 1, 2, 4, 8 runs sharing the GPU
#                                         (benchmarks.concurrent); with several GPUs, data-parallel
#                                         scaling at 1, 2, 4, 8 ranks (benchmarks.ddp): about 15-20 minutes
#   bash benchmarks/gpu.sh train MINUTES  the ptb preset trained MINUTES minutes on the GPU, then
#                                         evaluated (valid and test perplexity); the same command
#                                         again continues the run where it stopped
#
# The corpora are found where awdlstm looks for them: $AWDLSTM_DATA, ./data, ../shared/data
# (see README, "Data"). Python: $PYTHON if set, else .venv/bin/python, else python3 if it has
# torch and pytest; otherwise scripts/setup.sh makes .venv first. Everything goes into
# $RESULTS (default $RUNS/MODE-DATE-TIME, $RUNS default runs/gpu): gpu.log with the GPU, the
# versions and every command's output, the benchmark result files, the training's config,
# metrics and results. The training run itself is $RUNS/train-PRESET.
#
# Settings (environment): PRESET (bench and train; default ptb), BATCH_SIZES (bench; default
# "40 20"), STEPS (bench; default 50), DEVICE (default cuda). DEVICE=cpu PRESET=tiny runs the
# same steps on the CPU, shortened: a test of this script, not a measurement.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=${1:-}
case "$mode" in
check|bench) ;;
train)
    minutes=${2:-}
    if ! [[ "$minutes" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
        echo "error: train needs the minutes to train, e.g. bash benchmarks/gpu.sh train 30" >&2
        exit 2
    fi
    ;;
*)
    echo "usage: bash benchmarks/gpu.sh check|bench|train MINUTES" >&2
    exit 2
    ;;
esac

DEVICE=${DEVICE:-cuda}
PRESET=${PRESET:-ptb}
BATCH_SIZES=${BATCH_SIZES:-40 20}
RUNS=${RUNS:-runs/gpu}
RESULTS=${RESULTS:-$RUNS/$mode-$(date +%Y%m%d-%H%M%S)}

# ---------------------------------------------------------------- python
have_deps() { "$1" -c "import torch, pytest" >/dev/null 2>&1; }
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ] && have_deps .venv/bin/python; then
    PY=.venv/bin/python
elif command -v python3 >/dev/null 2>&1 && have_deps python3; then
    PY=python3
else
    echo "setting up .venv with scripts/setup.sh ..."
    bash scripts/setup.sh
    PY=.venv/bin/python
fi
# awdlstm and the benchmarks run from this clone, installed or not
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

# ---------------------------------------------------------------- the GPU
if [ "$DEVICE" != cpu ]; then
    if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
        build=$("$PY" -c "import torch; print(torch.__version__, 'CUDA', torch.version.cuda or 'none (a CPU-only build)')" 2>&1 || true)
        echo "error: PyTorch sees no CUDA GPU (torch $build)." >&2
        if command -v nvidia-smi >/dev/null 2>&1; then
            echo "nvidia-smi lists: $(nvidia-smi -L 2>&1 | head -n 4 | tr '\n' ' ')" >&2
            echo "Install a PyTorch build for this driver's CUDA (https://pytorch.org), or check CUDA_VISIBLE_DEVICES." >&2
        else
            echo "nvidia-smi is not on PATH: no NVIDIA driver on this machine. Run this on a machine with an NVIDIA GPU;" >&2
            echo "DEVICE=cpu PRESET=tiny bash benchmarks/gpu.sh $mode only tests this script on the CPU." >&2
        fi
        exit 2
    fi
fi

mkdir -p "$RESULTS"
log="$RESULTS/gpu.log"
{
    echo "# bash benchmarks/gpu.sh $* ($(date -Is), DEVICE=$DEVICE PRESET=$PRESET)"
    git log -1 --format='commit %H %s' 2>/dev/null || true
    command -v nvidia-smi >/dev/null 2>&1 &&
        nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>/dev/null || true
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'cudnn', torch.backends.cudnn.version())"
} >>"$log" 2>&1
run() { echo "+ $*" | tee -a "$log"; "$@" 2>&1 | tee -a "$log"; }

smoke=0
[ "$DEVICE" = cpu ] && smoke=1

case "$mode" in
check)
    if [ "$smoke" = 1 ]; then
        echo "DEVICE=cpu: the GPU tests (pytest -m gpu) are skipped" | tee -a "$log"
    else
        run "$PY" -m pytest -q -p no:cacheprovider -rs -m gpu tests
    fi
    # A short training of the tiny model on real PTB: it must learn (loss falls) and evaluate.
    if [ "$smoke" = 1 ]; then smoke_args=(--max-steps 30 --no-eval); else smoke_args=(--max-steps 400); fi
    run "$PY" -m awdlstm train --preset tiny --out "$RESULTS/smoke" --device "$DEVICE" "${smoke_args[@]}" \
        --set train.log_every=50
    ;;
bench)
    steps=${STEPS:-$([ "$smoke" = 1 ] && echo 2 || echo 50)}
    short=()
    [ "$smoke" = 1 ] && short=(--warmup 1 --rounds 1 --peak-reps 1 --no-memory)
    for bs in $BATCH_SIZES; do
        run "$PY" -m benchmarks.run --preset "$PRESET" --batch-size "$bs" --steps "$steps" --device "$DEVICE" \
            --out "$RESULTS" ${short[@]+"${short[@]}"}
        if [ "$smoke" = 1 ]; then
            continue  # bf16 and compile on the CPU: see benchmarks/README.md (slower than fp32 there)
        fi
        run "$PY" -m benchmarks.run --preset "$PRESET" --batch-size "$bs" --steps "$steps" --device "$DEVICE" \
            --precision bf16 --compile --out "$RESULTS"
    done
    if [ "$smoke" = 1 ]; then
        run "$PY" -m benchmarks.concurrent --preset "$PRESET" --runs 1 --seconds 1 --device "$DEVICE" --out "$RESULTS"
    else
        run "$PY" -m benchmarks.concurrent --preset "$PRESET" --batch-size 40 --runs 1,2,4,8 --seconds 30 \
            --device "$DEVICE" --out "$RESULTS"
        # Data-parallel weak scaling (the preset's batch on every GPU) at 1, 2, 4, 8 ranks.
        ngpu=$("$PY" -c "import torch; print(torch.cuda.device_count())")
        if [ "$ngpu" -gt 1 ]; then
            ranks=1 r=2
            while [ "$r" -le "$ngpu" ] && [ "$r" -le 8 ]; do ranks="$ranks,$r"; r=$((r * 2)); done
            per_rank=$("$PY" -c "from awdlstm.presets import get_preset; print(get_preset('$PRESET').data.batch_size)")
            run "$PY" -m benchmarks.ddp --device cuda --preset "$PRESET" --ranks "$ranks" --per-rank-batch "$per_rank" \
                --out "$RESULTS"
        else
            echo "one GPU: the data-parallel scaling benchmark (benchmarks.ddp) needs 2 or more" | tee -a "$log"
        fi
    fi
    ;;
train)
    dir=$RUNS/train-$PRESET
    if [ -f "$dir/last.pt" ]; then
        echo "continuing $dir" | tee -a "$log"
        run "$PY" -m awdlstm train --out "$dir" --resume --max-minutes "$minutes" --device "$DEVICE"
    else
        run "$PY" -m awdlstm train --preset "$PRESET" --out "$dir" --max-minutes "$minutes" --device "$DEVICE"
    fi
    for f in config.json metrics.jsonl results.json; do
        [ -f "$dir/$f" ] && cp "$dir/$f" "$RESULTS/$f"
    done
    ;;
esac
echo "results: $RESULTS"
