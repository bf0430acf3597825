#!/usr/bin/env bash
# Every GPU measurement the project asks for, in one call of about 8 minutes on an H200.
#
# On the workstation, once (the data travels with the working tree; nothing is downloaded):
#     mkdir -p .data && cp -r /usr/share/datasets/fashion-mnist .data/
# Then one device call:
#     run(command="bash benchmarks/gpu_session.sh", carry=[".data"], timeout_s=560)
# and copy what comes back into the repository:
#     bash benchmarks/gpu_session.sh --collect FILES_AT
#
# Stages, each under its own time limit so that one overrun cannot starve the others, each
# writing its results as it goes (a stage cut short keeps what it measured):
#   1. throughput: plain training vs psg for AllCNN and ResNet-18 at 32x32 and ResNet-50 at 224,
#      bf16 + channels_last (issue 3's >= 0.8 efficiency goal); then ResNet-18 at 32x32 with
#      plain training and psg under torch.compile
#   2. sweep concurrency: the paper's 20-point psg grid, 1/2/4/8 runs at once vs the sum of
#      single runs
#   3. Fashion-MNIST at the paper's scale (60k/10k, 15 epochs, batch 64), class 0, one seed:
#      Retrain, Boundary Shrink, psg, psg ours, psg fast, finetune ("gpu" scale)
# The machine has torch but not revise's DICOM/signing dependencies: the benchmarks import only
# what they need, from this checkout (PYTHONPATH).
set -uo pipefail

if [[ "${1:-}" == "--collect" ]]; then
    from=${2:?usage: gpu_session.sh --collect FOLDER}
    repo=$(cd "$(dirname "$0")/.." && pwd)
    for f in "$from"/*.json; do cp -v "$f" "$repo/benchmarks/results/"; done
    for f in throughput.md sweep.md; do
        [[ -f "$from/$f" ]] && cp -v "$from/$f" "$repo/docs/benchmarks/$f"
    done
    # drawn here from the JSON, which is written after every run (complete even if cut short)
    fashion=$repo/benchmarks/results/fashion_mnist-gpu.json
    [[ -f "$fashion" ]] && ${PYTHON:-python3} "$repo/benchmarks/fashion_mnist.py" --render "$fashion"
    exit 0
fi

# $OUT gets 8 files at most (the device tool brings back no more): the log, 4 JSON, 3 Markdown
OUT=${OUT:-/tmp/gpu-session}
DATA=${DATA:-.data/fashion-mnist}
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
LOG=$OUT/session.log
exec > >(tee -a "$LOG") 2>&1

stage() {  # stage NAME SECONDS COMMAND...: run under a time limit, report how it ended
    local name=$1 limit=$2 start=$SECONDS rc
    shift 2
    echo "=== $name (limit ${limit}s): $*"
    timeout --signal=INT --kill-after=20 "$limit" "$@"
    rc=$?
    echo "=== $name: exit $rc after $((SECONDS - start)) s"
}

date -u
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
$PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda,
"device", torch.cuda.get_device_name())' || exit 1
[[ -d "$DATA" ]] || echo "no Fashion-MNIST at $DATA: stages 2 and 3 will fail (carry .data)"

cp docs/benchmarks/throughput.md docs/benchmarks/sweep.md "$OUT/" 2>/dev/null
stage throughput 110 $PY benchmarks/throughput.py --device cuda \
    --models allcnn,resnet18_cifar,resnet50 \
    --out "$OUT/throughput-nvidia-h200.json" --markdown "$OUT/throughput.md"
stage throughput_compiled 80 $PY benchmarks/throughput.py --device cuda --compile \
    --models resnet18_cifar --no-markdown --out "$OUT/throughput-nvidia-h200-compiled.json"
stage sweep 70 $PY benchmarks/sweep_concurrency.py --device cuda --data "$DATA" \
    --out "$OUT/sweep_concurrency-nvidia-h200.json" --markdown "$OUT/sweep.md"
stage fashion_mnist 240 $PY benchmarks/fashion_mnist.py --scale gpu --device cuda \
    --data "$DATA" --out "$OUT/fashion_mnist-gpu.json" --markdown "$OUT/fashion_mnist-gpu.md"
date -u
