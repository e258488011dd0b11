#!/usr/bin/env bash
# Every test: formatting, lints (with and without MPI), all tests in release mode on
# lavapipe (Vulkan on the CPU; data-parallel training under mpirun included) and the
# kernel tests again on wgpu's GL backend (llvmpipe), the wasm32 build of the viewer and
# its end-to-end tests in headless Chromium (the viewer, training in the page). Installs
# what is missing when run as root on Debian/Ubuntu.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh
start=$(date +%s)

say "checking prerequisites"
need_software_vulkan
install_packages libegl1 libgl1-mesa-dri chromium chromium-driver curl
# OpenMPI for data-parallel training (`mpirun`), and libclang for the bindings' generator.
install_packages openmpi-bin libopenmpi-dev libclang-dev
if ! rustup target list --installed | grep -q wasm32-unknown-unknown; then
    say "adding the wasm32-unknown-unknown target"
    rustup target add wasm32-unknown-unknown
fi
rustup component list --installed | grep -q '^rustfmt' || rustup component add rustfmt
rustup component list --installed | grep -q '^clippy' || rustup component add clippy

say "cargo fmt --check"
cargo fmt --all -- --check

say "structure: function and file sizes, import cycles (scripts/check_structure.py)"
python3 scripts/check_structure.py

say "cargo clippy (all targets, warnings are errors; without and with the mpi feature)"
cargo clippy --release --workspace --all-targets -q -- -D warnings
cargo clippy --release --workspace --all-targets -q --features autoprog-trainer/mpi -- -D warnings

icd=$(lavapipe_icd)
[ -n "$icd" ] || { echo "error: lavapipe's ICD manifest not found under /usr/share/vulkan/icd.d" >&2; exit 1; }

say "tests on Vulkan lavapipe ($icd), with the mpi feature (2 ranks under mpirun)"
VK_DRIVER_FILES="$icd" WGPU_BACKEND=vulkan cargo test --release --workspace --features autoprog-trainer/mpi

say "kernel tests on the GL backend (llvmpipe)"
# One thread: wgpu's GL backend serialises on one context lock, and many waiting
# threads on 2 cores can exceed its lock timeout. The f16 tests are left out: wgpu's GL
# backend has no f16 shaders (they ran on lavapipe above, and fail there if it lacks them).
WGPU_BACKEND=gl cargo test --release -p autoprog --test kernels -- --test-threads=1 --skip f16

say "the core library for wasm32 (the training loop included)"
cargo build --release -q -p autoprog --target wasm32-unknown-unknown

say "wasm32 build of the viewer"
www/build.sh
wasm_bytes=$(stat -c %s www/pkg/autoprog_viewer_bg.wasm)
max_wasm_bytes=$((3 * 1000 * 1000))
[ "$wasm_bytes" -le "$max_wasm_bytes" ] ||
    { echo "error: the release wasm is $wasm_bytes bytes, over the 3 MB budget" >&2; exit 1; }

say "the viewer end to end in headless Chromium (WebGPU on SwiftShader, then the CPU fallback)"
python3 scripts/viewer_e2e.py

say "training in the browser end to end (headless Chromium, WebGPU on SwiftShader)"
python3 scripts/train_e2e.py

say "all checks passed in $(( $(date +%s) - start )) s"
