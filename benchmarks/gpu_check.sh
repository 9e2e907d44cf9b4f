#!/usr/bin/env bash
# The GPU check, one prepared run of under 10 minutes on one CUDA GPU, everything into one log:
#   1. the machine (nvidia-smi, torch, the GPU);
#   2. the CUDA tests (tests/test_cuda.py: the layer against the float64 oracle, gradcheck,
#      autocast bf16/fp16, contributions, the trainer, no host sync in a training step);
#   3. the training-step benchmark of the paper's 9L-S at batch 64 and 256 in bf16: images/s
#      and the fraction of the GPU's bf16 matmul rate measured in the same run;
#   4. a short training run (cifar10-9L-S, 2 epochs of 4,096 synthetic images, precision auto).
# Usage (from anywhere):  bash benchmarks/gpu_check.sh [LOG]    (default: $OUT/gpu_check.log, else ./gpu_check.log)
set -uo pipefail
cd "$(dirname "$0")/.."
LOG="${1:-${OUT:-.}/gpu_check.log}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
status=0
step() {  # step NAME SECONDS COMMAND...: run one part with a time limit, keep going on failure
    local name=$1 limit=$2; shift 2
    echo; echo "=== $name ($(date -u +%H:%M:%S), limit ${limit} s) ==="
    timeout "$limit" "$@" || { echo "=== $name FAILED (exit $?) ==="; status=1; }
}
{
    step machine 30 bash -c 'nvidia-smi; python3 -c "import torch; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, torch.cuda.get_device_name())"'
    step "CUDA tests" 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py
    for batch in 64 256; do
        step "9L-S training step, bf16, batch $batch" 90 python3 -m benchmarks.bench_training --device cuda \
            --rank-factors 32 --batch "$batch" --precisions bf16 --steps 20 --warmup 5
    done
    step "short training run (synthetic data)" 120 python3 - <<'PY'
import time, torch
from coda.data import ImageDataset
from coda.train import TrainConfig, train
g = torch.Generator().manual_seed(0)
data = ImageDataset(torch.randint(0, 256, (4096, 3, 32, 32), dtype=torch.uint8, generator=g),
                    torch.randint(0, 10, (4096,), generator=g), tuple(f"class{i}" for i in range(10)))
cfg = TrainConfig(model="cifar10-9L-S", epochs=2, batch_size=256, lr=1e-3, warmup_epochs=0.5, precision="auto")
start = time.perf_counter()
model, history = train(cfg, device="cuda", train_data=data, test_data=data.first(1024))
print(f"2 epochs of 4,096 images in {time.perf_counter() - start:.1f} s; peak GPU memory "
      f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
assert all(torch.isfinite(torch.tensor(h["train_loss"])) for h in history)
PY
    echo; echo "=== done: $([ $status = 0 ] && echo all parts passed || echo some part FAILED) ==="
} 2>&1 | tee "$LOG"
exit $status
