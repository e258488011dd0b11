#!/usr/bin/env python3
"""End-to-end test of training in the browser: headless Chromium, WebGPU on SwiftShader.

Opens `?train=micro&schedule=auto&…&search_cost=flops&search_space=anchored` (no clicks), pauses and resumes it,
reloads the page once the first epoch's checkpoint is kept in IndexedDB (the link then
continues the saved run), and checks once the run is done (`train-status` is `done`) that
  - the live panels match the downloaded `log.jsonl`: `stage-count` is the number of stages in
    `summary.json` (and of the log's stage events), the `search-winner`s are the log's
    winners, in order; the log holds two sessions (before and after the reload);
  - the page's prediction for a fixture image with the trained model equals `autoprog predict`
    on the downloaded checkpoint (logits within rel 1e-3, abs 1e-4);
  - the same run trained natively (`autoprog train --preset quick --model micro …` with the
    link's values, on lavapipe) resolves the same `config.toml`, logs the same first step
    losses (rel 1e-3: f32 kernels summing in another order on another device) and makes the
    same stage decisions (the searches score by FLOPs);
  - the downloaded files, laid out as a run directory, resume natively (`autoprog train
    --resume DIR --epochs E+1`) and the run finishes;
  - the run, reload included, trains to the end in under 3 minutes;
and that a picked folder of PNGs (`train/<class>/`, `val/<class>/`) trains in the page with the
same first losses as `autoprog train --data` on that folder.
Screenshots (mid-search and at the end) go to target/e2e/.

Usage: scripts/train_e2e.py  (after `cargo build --release -p autoprog-trainer` and `www/build.sh`)
"""

import base64
import json
import os
import random
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import tomllib
import zlib

from viewer_e2e import (BINARY, IMAGE, ROOT, SHOTS, WebDriver, close_enough, fail, free_port, run, start_browser_tools,
                        stop_children)

EPOCHS, SEED, IMAGES, VAL_IMAGES = 3, 0, 320, 64
LINK = (f"?train=micro&schedule=auto&epochs={EPOCHS}&seed={SEED}&images={IMAGES}&val_images={VAL_IMAGES}"
        "&search_cost=flops&search_space=anchored")
# The anchored search space searches at every stage but the last; the thrifty default offers
# nothing above the schedule's network, so on micro's 3 stages it would not search at all.
# Logged steps whose losses must equal the native run's: the first stage, before the first
# reload and growth. Later steps are compared too and their largest difference printed.
FIRST_STEPS = 5
REL_LOSS = 1e-3
TIME_BAR_S = 180
WEBGPU = ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"]


def download(browser, css):
    """The bytes behind the page's download link `css`."""
    encoded = browser.js_async("""
        const done = arguments[arguments.length - 1];
        const link = document.querySelector(arguments[0]);
        if (!link || !link.href.startsWith('blob:')) { done(null); return; }
        fetch(link.href).then(r => r.blob()).then(blob => {
            const reader = new FileReader();
            reader.onload = () => done(reader.result.split(',')[1]);
            reader.readAsDataURL(blob);
        });""", css)
    if encoded is None:
        fail(f"the page offers no download at {css}")
    return base64.b64decode(encoded)


def events(log_text, name):
    return [e for e in map(json.loads, log_text.splitlines()) if e["event"] == name]


def wait_status(browser, wanted, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = browser.text("train-status") or ""
        if status.startswith("error"):
            fail(f"the browser run failed: {status}")
        if status in wanted:
            return status
        time.sleep(0.25)
    fail(f"timed out after {timeout} s waiting for train-status {wanted}; it is {browser.text('train-status')!r}, "
         f"the page's error: {browser.text('error')!r}")


def check_pause(browser):
    """Pause holds the run (no step for 2 s), Resume continues it."""
    browser.js("document.getElementById('train-pause').click();")
    wait_status(browser, {"paused"}, 30)
    step = browser.text("train-step")
    time.sleep(2)
    if browser.text("train-step") != step or browser.text("train-status") != "paused":
        fail(f"the paused run went on: step {step} -> {browser.text('train-step')}, status {browser.text('train-status')!r}")
    browser.js("document.getElementById('train-pause').click();")
    wait_status(browser, {"running", "done"}, 30)
    print(f"[train] paused at step {step} for 2 s without a step, then resumed")


def train_in_browser(browser, base):
    """Runs the linked training with one reload; returns the seconds it took."""
    started = time.time()
    browser.open(base + LINK)
    browser.wait("the page to start the linked run", "document.body.dataset.ready === 'true'")
    wait_status(browser, {"running"}, 60)
    browser.wait("a step of the search", "Number(document.querySelector(\"[data-testid='train-step']\").textContent) >= 2")
    browser.screenshot("train-mid-search-1280x800.png", 1280, 800)
    check_pause(browser)
    browser.wait("the first epoch's checkpoint in IndexedDB", "document.body.dataset.trainSavedStep", 180)
    step_before = int(browser.text("train-step"))
    browser.open(base + LINK)  # a reload: the same link continues the saved run
    browser.wait("the page to continue the saved run", "document.body.dataset.ready === 'true'")
    browser.choose_file("#image-file", IMAGE)
    wait_status(browser, {"done"}, TIME_BAR_S)
    seconds = time.time() - started
    print(f"[train] reloaded at step {step_before}; the run ended after {seconds:.0f} s (bar: {TIME_BAR_S} s)")
    if seconds > TIME_BAR_S:
        fail(f"the micro auto run took {seconds:.0f} s in the browser (bar: under {TIME_BAR_S} s)")
    browser.screenshot("train-done-1280x800.png", 1280, 800)
    browser.screenshot("train-done-1280-tall.png", 1280, 3000)
    return seconds


def check_panels(browser, log, summary):
    winners = [e["winner"] for e in events(log, "search")]
    shown = browser.js("return [...document.querySelectorAll(\"[data-testid='search-winner']\")].map(e => e.textContent);")
    stages = len(summary["stages"])
    if browser.text("stage-count") != str(stages) or len(events(log, "stage")) != stages:
        fail(f"stage-count {browser.text('stage-count')!r}, summary stages {stages}, "
             f"stage events {len(events(log, 'stage'))}")
    if not winners or shown != winners:
        fail(f"search-winner {shown} differs from the log's winners {winners} (or no search ran)")
    if not events(log, "growth"):
        fail("the browser run never grew")
    sessions = len(events(log, "run_start"))
    if sessions != 2:
        fail(f"the log holds {sessions} sessions; the reload should have made 2")
    print(f"[train] panels match the log: {stages} stages, winners {winners}, {sessions} sessions")
    return winners


def check_native(work, files, browser_log, browser_winners):
    """The link's run trained natively (its flags resolve to the browser's config.toml), and
    the browser's files resumed natively."""
    native_dir = os.path.join(work, "native")
    run("train", "--preset", "quick", "--model", "micro", "--schedule", "auto", "--epochs", str(EPOCHS),
        "--seed", str(SEED), "--train-images", str(IMAGES), "--val-images", str(VAL_IMAGES),
        "--search-cost", "flops", "--search-space", "anchored", "--precision", "f32", "--quiet", "--out", native_dir)
    # SwiftShader has no f16 shaders, so the page's `auto` precision trains in f32; lavapipe
    # has them, so the native run asks for f32 to train the same numbers. Otherwise the
    # flags must resolve to the same config.
    with open(files["config.toml"], "rb") as ours, open(os.path.join(native_dir, "config.toml"), "rb") as theirs:
        ours, theirs = tomllib.load(ours), tomllib.load(theirs)
        if ours["recipe"].get("precision") != "auto" or theirs["recipe"].get("precision") != "f32":
            fail(f"precision: the page's config says {ours['recipe'].get('precision')}, the native run's "
                 f"{theirs['recipe'].get('precision')} (expected auto and f32)")
        ours["recipe"].pop("precision"), theirs["recipe"].pop("precision")
        if ours != theirs:
            fail("the browser's config.toml differs from the one `autoprog train` resolves from the same flags")
    native_log = open(os.path.join(native_dir, "log.jsonl")).read()
    steps = [(e["step"], e["loss"]) for e in events(native_log, "step")]
    browser_steps = dict((e["step"], e["loss"]) for e in events(browser_log, "step"))
    pairs = [(browser_steps[s], loss) for s, loss in steps if s in browser_steps]
    if len(pairs) < FIRST_STEPS:
        fail(f"only {len(pairs)} logged steps in common with the native run")
    rel = [abs(b - n) / abs(n) for b, n in pairs]
    if max(rel[:FIRST_STEPS]) > REL_LOSS:
        fail(f"the first {FIRST_STEPS} step losses differ from native by rel {max(rel[:FIRST_STEPS]):.1e}: {pairs[:FIRST_STEPS]}")
    decisions = lambda log: [(e["stage"], e["resolution"], e["depth"]) for e in events(log, "stage")]
    native_winners = [e["winner"] for e in events(native_log, "search")]
    if native_winners != browser_winners or decisions(native_log) != decisions(browser_log):
        fail(f"stage decisions differ: native {native_winners} {decisions(native_log)}, "
             f"browser {browser_winners} {decisions(browser_log)}")
    print(f"[train] native run: first {FIRST_STEPS} losses within rel {max(rel[:FIRST_STEPS]):.1e} "
          f"(all {len(pairs)} logged: {max(rel):.1e}); same stage decisions {decisions(native_log)}")

    resumed = os.path.join(work, "resumed")
    os.makedirs(os.path.join(resumed, "checkpoints"))
    for name, target in [("config.toml", "config.toml"), ("log.jsonl", "log.jsonl"),
                         ("last.safetensors", "checkpoints/last.safetensors")]:
        with open(files[name], "rb") as f, open(os.path.join(resumed, target), "wb") as out:
            out.write(f.read())
    run("train", "--resume", resumed, "--epochs", str(EPOCHS + 1), "--quiet")
    summary = json.load(open(os.path.join(resumed, "summary.json")))
    if summary["epochs"] != EPOCHS + 1:
        fail(f"the natively resumed run's summary says {summary['epochs']} epochs, expected {EPOCHS + 1}")
    print(f"[train] the downloaded run resumed natively and finished epoch {EPOCHS + 1} "
          f"(val acc {summary['val_acc']:.3f})")


def write_png(path, pixels, side):
    """An 8-bit RGB PNG of `pixels` (rows of side * 3 bytes)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\0" + pixels[y * side * 3:(y + 1) * side * 3] for y in range(side))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def picked_folder(work):
    """`picked/{train,val}/{dark,light}/*.png`: noise around two brightness levels, seeded."""
    rng = random.Random(0)
    root = os.path.join(work, "picked")
    for split, count in [("train", 64), ("val", 8)]:
        for base, name in [(60, "dark"), (190, "light")]:
            os.makedirs(os.path.join(root, split, name))
            for i in range(count):
                pixels = bytes(min(255, max(0, base + rng.randint(-50, 50))) for _ in range(24 * 24 * 3))
                write_png(os.path.join(root, split, name, f"{i:03}.png"), pixels, 24)
    return root


def train_on_folder(browser, base, work):
    """A picked folder trains in the page as `autoprog train --data` trains it natively."""
    folder = picked_folder(work)
    browser.open(base)
    browser.wait("the page", "document.body.dataset.ready === 'true'")
    browser.js("const s = document.getElementById('train-data'); s.value = 'folder';"
               "s.dispatchEvent(new Event('change'));")
    browser.choose_file("#train-folder", folder)
    browser.wait("the picked images to be decoded", "document.body.dataset.folderReady === 'true'", 60)
    # Epochs left empty: as natively, the preset's steps spread over the folder's 128 training
    # images (capped at 80 epochs) and flips as the probe advises, and the page says so.
    browser.js("document.getElementById('train-model').value = 'micro';"
               "document.getElementById('train-schedule').value = 'none';"
               "document.getElementById('train-epochs').value = '';"
               "document.getElementById('train-start').click();")
    wait_status(browser, {"running", "done"}, 60)
    notes = browser.js("return document.getElementById('train-notes').textContent;") or ""
    spread = "epochs: 80 (the quick preset's 4 epochs of 15000 images, spread over the 128 training images"
    if spread not in notes or "flips: " not in notes:
        fail(f"a folder run with the epochs left empty should say how it fitted the folder; its notes: {notes!r}")
    browser.js("document.getElementById('train-stop').click();")
    browser.wait("the stopped run", "!document.getElementById('train-start').disabled", 60)
    print("[train] a picked folder with the epochs left empty gets the preset's steps spread over it (80 epochs)")
    browser.js("document.getElementById('train-epochs').value = '1';"
               "document.getElementById('train-start').click();")
    wait_status(browser, {"done"}, 120)
    log = download(browser, "#train-log").decode()
    config = os.path.join(work, "picked-config.toml")
    with open(config, "wb") as f:
        f.write(download(browser, "#train-config"))
    native_dir = os.path.join(work, "picked-native")
    run("train", "--config", config, "--precision", "f32", "--quiet", "--out", native_dir, cwd=work)
    native = [(e["step"], e["loss"]) for e in events(open(os.path.join(native_dir, "log.jsonl")).read(), "step")]
    ours = [(e["step"], e["loss"]) for e in events(log, "step")]
    if len(ours) < 2 or [s for s, _ in ours] != [s for s, _ in native]:
        fail(f"the picked folder's run logged steps {ours}, the native run {native}")
    rel = max(abs(a - b) / abs(b) for (_, a), (_, b) in zip(ours, native))
    if rel > REL_LOSS:
        fail(f"the picked folder's losses {ours} differ from autoprog train --data's {native} (rel {rel:.1e})")
    print(f"[train] a picked folder of {2 * 72} PNGs trains as `autoprog train --data` does "
          f"({len(ours)} steps, losses within rel {rel:.1e})")


def main():
    work = tempfile.mkdtemp(prefix="autoprog-train-e2e-")
    os.makedirs(SHOTS, exist_ok=True)
    children = []
    try:
        port = free_port()
        server = subprocess.Popen([BINARY, "serve", "--port", str(port), "--www", os.path.join(ROOT, "www")],
                                  stdout=subprocess.PIPE, text=True)
        children.append(server)
        base = server.stdout.readline().strip()
        driver_url = start_browser_tools(children)
        browser = WebDriver(driver_url, WEBGPU, tempfile.mkdtemp(dir=work))
        train_in_browser(browser, base)
        if browser.text("error"):
            fail(f"the page shows an error: {browser.text('error')}")
        files = {}
        for name, css in [("log.jsonl", "#train-log"), ("summary.json", "#train-summary"),
                          ("config.toml", "#train-config"), ("last.safetensors", "[data-testid='train-download']")]:
            files[name] = os.path.join(work, name)
            with open(files[name], "wb") as f:
                f.write(download(browser, css))
        log = open(files["log.jsonl"]).read()
        winners = check_panels(browser, log, json.load(open(files["summary.json"])))
        if browser.text("backend") != "webgpu":
            fail(f"the trained model runs on {browser.text('backend')!r} in the page, expected webgpu")
        page_logits = json.loads(browser.text("logits") or "null")
        native = json.loads(run("predict", "--checkpoint", files["last.safetensors"], IMAGE, "--json"))[0]
        if not page_logits or not close_enough(page_logits, native["logits"]):
            fail(f"the page's logits {page_logits} differ from autoprog predict's {native['logits']}")
        print("[train] the page's prediction with the trained model equals autoprog predict on the download")
        train_on_folder(browser, base, work)
        browser.close()
        check_native(work, files, log, winners)
        print(f"browser training end-to-end test passed; screenshots in {SHOTS}")
    finally:
        stop_children(children)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
