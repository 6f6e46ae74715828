#!/usr/bin/env bash
# The GPU checks, in one go, for a machine with one CUDA GPU (CI and these CPU machines have none):
#   bash bench/gpu_checks.sh [OUT_FOLDER]   (default bench/results/gpu: every log, the bench's JSON and summary.log;
#                                            the run folders of step 4 go to $RUNS, by default that folder too)
# 1. the GPU's facts and the versions used;
# 2. the tests that need CUDA (tests/training/test_cuda.py: bf16, SDPA, pinned copies, the GPU's peak memory, CPU
#    and GPU training alike in fp32, QLoRA), which skip without one;
# 3. `bench/speed.py` on the GPU: tunelab against the Trainer's default and best flags, side by side;
# 4. SmolLM2 LoRA on Rotten Tomatoes with `tunelab train`, bf16 and QLoRA (4-bit base): examples/s and GPU peak;
# 5. the training, method and task tests with the GPU visible, so that they train on it (the DDP and FSDP tests
#    need two devices and are left out).
# Each step has its own time limit and the script goes on after a failure, so one run reports on every step;
# the exit status is the number of steps that failed.
set -uo pipefail
out=${1:-bench/results/gpu}
runs=${RUNS:-$out}
mkdir -p "$out" "$runs"
py=${PYTHON:-python3}
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
failed=0
step() {  # step NAME SECONDS COMMAND...: run it with a limit, its output to the terminal and to OUT/NAME.log
    local name=$1 limit=$2; shift 2
    echo "=== $name (limit ${limit} s): $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
    local status=${PIPESTATUS[0]}
    echo "=== $name: exit $status after $((SECONDS - start)) s"
    [ "$status" = 0 ] || failed=$((failed + 1))
}

step facts 60 bash -c "nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; $py -c '
import torch, transformers, peft, importlib.util
print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"bf16\", torch.cuda.is_bf16_supported())
print(\"transformers\", transformers.__version__, \"peft\", peft.__version__,
      \"bitsandbytes\", bool(importlib.util.find_spec(\"bitsandbytes\")))'"
step cuda_tests 240 "$py" -m pytest -q -p no:cacheprovider tests/training/test_cuda.py tests/methods/test_quantize.py
step speed "${SPEED_LIMIT:-300}" "$py" bench/speed.py --cases "${SPEED_CASES:-minilm-lora,minilm-full,smollm2-lora}" \
    --repeats "${REPEATS:-2}" --examples "${EXAMPLES:-6000}" --smollm2-examples "${SMOLLM2_EXAMPLES:-2000}" \
    --json "$out/speed.json"
for quantize in null 4bit; do
    step "smollm2_rotten_tomatoes_quantize_$quantize" 240 "$py" -m tunelab.cli train \
        configs/sentiment/smollm2_lora.yaml "method.quantize=$quantize" "output=$runs/runs-$quantize" \
        ${SMOLLM2_RT_OVERRIDES:-}
done
"$py" - "$runs" <<'EOF' | tee "$out/summary.log"
import json, sys
from pathlib import Path
for metrics in sorted(Path(sys.argv[1]).glob("runs-*/*/metrics.json")):
    m = json.loads(metrics.read_text())
    train = m["splits"]["train"] if isinstance(m["splits"]["train"], int) else m["splits"]["train"]["examples"]
    print(f"{metrics.parent.parent.name}: {train * m['epochs_run'] / m['time']['fit_seconds']:.1f} examples/s "
          f"(training and validation, {m['time']['fit_seconds']} s), GPU peak {m['memory']['device_peak_mb']} MiB, "
          f"precision {m['precision']}, test F1 {m['test']['f1']:.3f}")
EOF
step suite_on_gpu "${SUITE_LIMIT:-180}" "$py" -m pytest -q -p no:cacheprovider -n "${WORKERS:-8}" tests/training \
    tests/methods tests/tasks --ignore tests/training/test_ddp.py --ignore tests/training/test_fsdp.py
echo "steps failed: $failed" | tee -a "$out/summary.log"
exit "$failed"
