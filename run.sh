#!/usr/bin/env bash
# The main job: build autoprog and run it on the best adapter here. Until the trainer
# lands this is the kernel benchmark (`autoprog bench`); arguments are passed through.
# Installs the software Vulkan driver first when no GPU adapter is found.
set -euo pipefail
cd "$(dirname "$0")"
source scripts/env.sh

cargo build --release -q -p autoprog-trainer
if ! ./target/release/autoprog info >/dev/null 2>&1; then
    say "no GPU adapter found; installing the software Vulkan driver (lavapipe)"
    need_software_vulkan
fi
exec ./target/release/autoprog bench "$@"
