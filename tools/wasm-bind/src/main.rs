//! `wasm-bind`: writes the JavaScript glue and the processed module for a wasm32 build of a
//! `wasm-bindgen` crate, as `wasm-bindgen --target web --no-typescript` does. It is the
//! library behind that CLI at the version our viewer is built with, so `www/build.sh` needs
//! no globally installed tool.
//!
//! Usage: `wasm-bind INPUT.wasm OUT_DIR`

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{ensure, Context};
use wasm_bindgen_cli_support::Bindgen;

const USAGE: &str = "usage: wasm-bind INPUT.wasm OUT_DIR (e.g. wasm-bind \
target/wasm32-unknown-unknown/release/autoprog_viewer.wasm www/pkg)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    let [input, out_dir] = args.as_slice() else {
        eprintln!("error: expected two arguments, got {}\n{USAGE}", args.len());
        return ExitCode::from(2);
    };
    match bind(&PathBuf::from(input), &PathBuf::from(out_dir)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bind(input: &PathBuf, out_dir: &PathBuf) -> anyhow::Result<()> {
    ensure!(
        input.is_file(),
        "{} does not exist; build it first with `cargo build -p autoprog-viewer --target wasm32-unknown-unknown \
            --release`",
        input.display()
    );
    // The CLI's default where the library's differs: the glue's `init()` finds the module
    // next to itself (`new URL("…_bg.wasm", import.meta.url)`), as www/main.js expects.
    Bindgen::new()
        .input_path(input)
        .web(true)?
        .typescript(false)
        .omit_default_module_path(false)
        .generate(out_dir)
        .with_context(|| format!("cannot bind {} into {}", input.display(), out_dir.display()))
}
