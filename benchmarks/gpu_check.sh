#!/usr/bin/env bash
# One GPU check for issue 12, in one device call (about 5 minutes), logging to $OUT:
#   (a) install the carried pydicom wheel (.whl/*.whl) into /tmp/site;
#   (b) the device-data / batched-augmentation / stage device-path tests (CUDA ones included),
#       the cost of one checkpoint write and the step loop with checkpoint writes every 25
#       steps, blocking vs background (benchmarks/bench_train.py --checkpoint-every);
#   (c) benchmarks/bench_gpu.py --loops: each stage's step loop, old path (DataLoader + per-sample
#       transforms) vs new (device data) vs the model-only ceiling, then torch.compile variants
#       (default and reduce-overhead = CUDA graphs) of the pretraining loop;
#   (d) examples/reproduce_paper.py --profile paper, last: each stage's time is appended to
#       $OUT/stage_times.txt as it completes, so a timeout keeps what finished.
# Files in $OUT (at most 8 come back): gpu_check.log, bench_loops.txt, bench_compile.txt,
# reproduce.log, stage_times.txt, gpu_util.csv, report.json (if the paper profile finishes).
#
# Usage (from the repository root):
#   OUT=/tmp/out bash benchmarks/gpu_check.sh                 # on the GPU machine
#   GPU_CHECK_TINY=1 OUT=/tmp/out bash benchmarks/gpu_check.sh   # CPU, tiny sizes (a dry run)
# GPU_CHECK_BUDGET (seconds, default 290) bounds the whole script; (d) gets what is left.
# GPU_CHECK_PARTS (default "tests loops compile reproduce") selects parts.
set -u
OUT=${OUT:?set OUT to the output folder}
mkdir -p "$OUT"
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-290}
PARTS=${GPU_CHECK_PARTS:-tests loops compile reproduce}
LOG="$OUT/gpu_check.log"
PY=${PYTHON:-python3}

log() { echo "[$(($(date +%s) - START)) s] $*" | tee -a "$LOG"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
want() { case " $PARTS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

if [ -n "${GPU_CHECK_TINY:-}" ]; then
    DEVICE=cpu
    BENCH_SIZES=(--studies 12 --batch 8 --finetune-batch 8 --localizer-batch 10 --loop-size 32
        --loop-localizer-size 64 --stack-size 64 --steps 1 --rounds 1 --workers 1)
    PROFILE=smoke
    WORKERS=1
else
    DEVICE=cuda
    # Paper sizes: 224 px ROI inputs, 64 discs x 3 views, 24 discs, 256 px localizer stacks.
    BENCH_SIZES=(--studies 400 --loop-size 224 --loop-localizer-size 256 --stack-size 256
        --steps 5 --rounds 3 --workers 16)
    PROFILE=paper
    WORKERS=16
fi

# (a) pydicom is not on the GPU machine: the wheel travels in .whl/.
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl >>"$LOG" 2>&1
fi
export PYTHONPATH=/tmp/site:$PWD
log "device $DEVICE, parts: $PARTS, budget ${BUDGET} s"
$PY - >>"$LOG" 2>&1 <<'EOF'
import os, torch, torchvision
print("torch", torch.__version__, "torchvision", torchvision.__version__, "cpus", os.cpu_count())
if torch.cuda.is_available():
    free, total = torch.cuda.mem_get_info()
    print(torch.cuda.get_device_name(), f"free {free / 2**30:.0f} of {total / 2**30:.0f} GiB")
EOF
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used --format=csv,noheader -l 1 \
        >"$OUT/gpu_util.csv" 2>/dev/null &
    SMI=$!
    trap 'kill $SMI 2>/dev/null' EXIT
fi

# (b) ~20 s: the stage device-path tests (CUDA ones included) and batched augmentation on CUDA.
if want tests; then
    log "tests"
    if $PY -c "import pytest" 2>/dev/null; then
        timeout 90 $PY -m pytest -q -rs -p no:cacheprovider tests/test_pipeline_device_batches.py \
            tests/test_data_batch_augment.py::test_cuda_gives_the_cpu_parameters_and_views \
            >>"$LOG" 2>&1
    else  # no pytest on the machine: the CUDA tests alone, fixtures built by hand
        timeout 90 $PY benchmarks/cuda_tests_without_pytest.py >>"$LOG" 2>&1
    fi
    log "tests exit $?"
fi

# (b') ~5 s: what one epoch's checkpoint write (last.pt, and best.pt when it improves) costs the
# step loop: a ResNet-18 with its AdamW state, saved from the device as the trainer saves it.
if want tests; then
    timeout 60 $PY - "$DEVICE" >>"$LOG" 2>&1 <<'EOF'
import sys, tempfile, time, torch
from lumbarssl.models import ContrastiveModel
from lumbarssl.training.checkpoint import atomic_save
device = torch.device(sys.argv[1])
model = ContrastiveModel().to(device)
optimizer = torch.optim.AdamW(model.parameters())
model(torch.randn(4, 1, 64, 64, device=device)).sum().backward()
optimizer.step()
state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
with tempfile.TemporaryDirectory() as folder:
    times = []
    for i in range(3):
        start = time.perf_counter()
        atomic_save(state, f"{folder}/last.pt")
        times.append(time.perf_counter() - start)
print(f"checkpoint write (model + AdamW state): {sorted(times)[1]:.3f} s median of 3")
EOF
fi

# (b'') ~30 s: the step loop with a checkpoint every 25 steps, written in the training thread
# against the background writer (TrainerConfig.background_checkpoints): medians and ratio.
if want tests; then
    log "bench checkpoints"
    if [ -n "${GPU_CHECK_TINY:-}" ]; then CKPT=(--checkpoint-every 2 --epochs 2 --repeats 1)
    else CKPT=(--checkpoint-every 25 --epochs 3 --repeats 3); fi
    timeout 90 $PY benchmarks/bench_train.py "${CKPT[@]}" --device "$DEVICE" >>"$LOG" 2>&1
    log "bench checkpoints exit $?"
fi

# (c) ~40 s: step loops of the three stages, no compile.
if want loops; then
    log "bench loops"
    timeout 90 $PY benchmarks/bench_gpu.py --loops --device "$DEVICE" "${BENCH_SIZES[@]}" \
        >"$OUT/bench_loops.txt" 2>&1
    log "bench loops exit $?"
fi

# (c') ~60-120 s (two compilations, then timing): torch.compile (default; reduce-overhead = CUDA graphs) of the pretraining loop.
if want compile; then
    log "bench compile"
    timeout 150 $PY benchmarks/bench_gpu.py --loops --compile --stages pretrain \
        --device "$DEVICE" "${BENCH_SIZES[@]}" >"$OUT/bench_compile.txt" 2>&1
    log "bench compile exit $?"
fi

# (d) the rest: the paper profile end to end; stage times appended as they complete.
if want reproduce; then
    remaining=$(($(left) - 5))
    log "reproduce --profile $PROFILE with ${remaining} s left"
    if [ "$remaining" -gt 10 ]; then
        : >"$OUT/stage_times.txt"
        timeout "$remaining" $PY -u examples/reproduce_paper.py --profile "$PROFILE" \
            --device "$DEVICE" --workers "$WORKERS" --out /tmp/gpu_check_reproduce 2>&1 |
            tee "$OUT/reproduce.log" |
            grep --line-buffered -E '^\[[a-z_0-9 /-]+\] [0-9.]+ s' >>"$OUT/stage_times.txt"
        log "reproduce exit ${PIPESTATUS[0]}"
        if [ -f /tmp/gpu_check_reproduce/report.json ]; then
            cp /tmp/gpu_check_reproduce/report.json "$OUT/report.json"
        fi
    fi
fi
log "done"
