#!/usr/bin/env bash
# Builds the viewer for the browser: the `viewer` crate to wasm32, bound into www/pkg/ by
# `wasm-bind`, a workspace tool on the wasm-bindgen library at the viewer's exact
# wasm-bindgen version (resolved in our Cargo.lock: no global install). Serve it with
# `autoprog serve`, or any static server that sends .wasm as application/wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-release}"

cargo build -q -p autoprog-viewer --target wasm32-unknown-unknown --profile "$profile"
cargo run -q --release -p autoprog-wasm-bind -- \
    "target/wasm32-unknown-unknown/$profile/autoprog_viewer.wasm" www/pkg
echo "www/pkg/autoprog_viewer_bg.wasm: $(stat -c %s www/pkg/autoprog_viewer_bg.wasm) bytes" >&2
