#!/usr/bin/env bash
# Ours against PyTorch on this machine's GPU, in one call: `autoprog bench` (training steps of
# nano and tiny at batch 64 and 512 in f32 and f16, matmul at 4096³, attention) and PyTorch's
# same steps (eager f32 with TF32 off, and autocast to bf16 and f16) and matmuls, merged into
# one JSON file and one Markdown table (scripts/bench_table.py).
#
#   scripts/gpu_bench.sh [OUT_DIR]        (default gpu-bench/)
#
# With KERNEL_TESTS set to the kernel test binary (`cargo test --release -p autoprog --test
# kernels --no-run` prints its path), it first runs the cooperative-matrix matmul test.
# Needs an `autoprog` binary (AUTOPROG, default target/release/autoprog, built with
# `cargo build --release -p autoprog-trainer`), python3 with torch and timm, and a Vulkan
# loader (scripts/gpu_env.sh unpacks one where the system has none).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=${1:-gpu-bench}
autoprog=${AUTOPROG:-target/release/autoprog}
mkdir -p "$out"
[ -x "$autoprog" ] || { echo "error: no autoprog binary at $autoprog; build it with cargo build --release -p autoprog-trainer or set AUTOPROG" >&2; exit 1; }

. "$here/gpu_env.sh"
run() { echo "==> $*" >&2; "$@"; }
run "$autoprog" info --json > "$out/info.json"
# The cooperative-matrix (tensor-core) matmul against its CPU twin, where a test binary was
# built and carried (KERNEL_TESTS, e.g. target/release/deps/kernels-*); it fails, not
# skips, on a device without cooperative matrices.
if [ -n "${KERNEL_TESTS:-}" ]; then
    AUTOPROG_REQUIRE_COOPMAT=1 run "$KERNEL_TESTS" --test-threads 1 cooperative 2>&1 | tee "$out/cooperative_test.txt" || true
fi
run "$autoprog" bench --json --train --train-batch 64 > "$out/ours_train_64.json"
run "$autoprog" bench --json --train --train-batch 512 > "$out/ours_train_512.json"
run "$autoprog" bench --json --size 4096 > "$out/ours_kernels.json"
run python3 "$here/torch_train_step.py" --batch 64 --batch 512 --precision f32 --precision bf16 --precision f16 \
    > "$out/torch_train.json"
run python3 "$here/torch_matmul.py" --size 4096 > "$out/torch_matmul.json"
python3 "$here/bench_table.py" --info "$out/info.json" --json "$out/gpu_bench.json" \
    --ours "$out/ours_train_64.json" "$out/ours_train_512.json" "$out/ours_kernels.json" \
    --torch "$out/torch_train.json" "$out/torch_matmul.json" | tee "$out/gpu_bench.md"
