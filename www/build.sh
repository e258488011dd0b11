#!/usr/bin/env bash
# Builds the viewer for the browser: the `viewer` crate to wasm32, bound into www/pkg/
# by the wasm-bindgen CLI pinned to the crate's wasm-bindgen version (installed when
# missing). Serve it with `autoprog serve`, or any static server that sends .wasm as
# application/wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"

version=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/[^0-9.]/, "", $0); print; exit }' Cargo.lock)
if ! command -v wasm-bindgen >/dev/null || [ "$(wasm-bindgen --version | awk '{print $2}')" != "$version" ]; then
    echo "==> installing wasm-bindgen-cli $version (once)" >&2
    cargo install -q --locked wasm-bindgen-cli --version "$version"
fi

cargo build -q -p autoprog-viewer --target wasm32-unknown-unknown --profile "$profile"
wasm-bindgen --target web --no-typescript --out-dir www/pkg \
    "target/wasm32-unknown-unknown/$profile/autoprog_viewer.wasm"
echo "www/pkg/autoprog_viewer_bg.wasm: $(stat -c %s www/pkg/autoprog_viewer_bg.wasm) bytes" >&2
