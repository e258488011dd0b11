#!/usr/bin/env bash
# The main job: build autoprog and train a ViT on the built-in data on the best adapter
# here (`autoprog train`: the `quick` preset on CPU adapters, `standard` on GPUs); arguments
# are passed through, e.g. `./run.sh --preset standard --epochs 10`. Installs the software
# Vulkan driver first when no GPU adapter is found.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh

# Data-parallel training under mpirun (the `mpi` feature) where OpenMPI and libclang are
# installed (apt-get install openmpi-bin libopenmpi-dev libclang-dev).
features=()
if command -v mpicc >/dev/null 2>&1 && ldconfig -p 2>/dev/null | grep -q 'libclang'; then
    features=(--features mpi)
fi
cargo build --release -q -p autoprog-trainer "${features[@]}"
if ! ./target/release/autoprog info >/dev/null 2>&1; then
    say "no GPU adapter found; installing the software Vulkan driver (lavapipe)"
    need_software_vulkan
fi
exec ./target/release/autoprog train "$@"
