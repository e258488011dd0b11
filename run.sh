#!/usr/bin/env bash
# The main job: build autoprog and train a ViT on the built-in data on the best adapter
# here (`autoprog train`: the `quick` preset on CPU adapters, `standard` on GPUs); arguments
# are passed through, e.g. `./run.sh --preset standard --epochs 10`. Installs the software
# Vulkan driver first when no GPU adapter is found.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh

cargo build --release -q -p autoprog-trainer
if ! ./target/release/autoprog info >/dev/null 2>&1; then
    say "no GPU adapter found; installing the software Vulkan driver (lavapipe)"
    need_software_vulkan
fi
exec ./target/release/autoprog train "$@"
