#!/usr/bin/env python3
"""End-to-end test of the web viewer in headless Chromium, driven through chromedriver.

Trains a small `--schedule auto` run, exports its model, classifies a fixture image with
`autoprog predict --json`, serves the run with `autoprog serve`, and checks in the browser,
once with WebGPU (SwiftShader) and once with WebGPU off (the CPU twin in wasm):
  - `stage-count` equals the length of `stages` in summary.json,
  - every `search-winner` equals the log's search winners, in order,
  - `top1` and `logits` equal the native prediction (same top-1, logits within rel 1e-3,
    abs 1e-4: f32 kernels in a different order on another GPU, or the f64 twin),
  - `backend` is `webgpu`, then `cpu`, and `error` stays empty,
  - a built-in sample classified next (on WebGPU through the forward pass the first
    prediction recorded, replayed) has the same logits in both modes;
and, with WebGPU off, that a training link says that training needs WebGPU, that a malformed
log, a run that is not served, a file that is not a model, a model of an unknown architecture,
crafted model files (a scalar head, an empty position embedding, zero-element tensors of 2^31
columns, metadata claiming depth or width 10^9) and a non-image each show a readable error while
the page stays usable, and that a log of 100 000 events loads in under 2 s. Screenshots
(1280x800, the whole page, and phone width) go to target/e2e/.

Usage: scripts/viewer_e2e.py  (after `cargo build --release -p autoprog-trainer` and `www/build.sh`)
"""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(ROOT, "target", "release", "autoprog")
SHOTS = os.path.join(ROOT, "target", "e2e")
IMAGE = os.path.join(ROOT, "tests", "fixtures", "viewer", "ring.png")
REL, ABS = 1e-3, 1e-4
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")


def fail(message):
    print(f"error: viewer end-to-end test: {message}", file=sys.stderr)
    sys.exit(1)


def run(*args, **kwargs):
    """Runs the autoprog binary; its stdout, or a failure naming the command."""
    result = subprocess.run([BINARY, *args], capture_output=True, text=True, **kwargs)
    if result.returncode != 0:
        fail(f"`autoprog {' '.join(args)}` failed:\n{result.stderr}")
    return result.stdout


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class WebDriver:
    """The few WebDriver commands the test needs, over plain HTTP."""

    def __init__(self, url, args, profile):
        self.url = url
        caps = {"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", "--no-first-run",
                     f"--user-data-dir={profile}", *args]}}}}
        self.session = self.call("POST", "/session", caps)["sessionId"]
        OPEN_SESSIONS.append(self)

    def call(self, method, path, body=None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.url + path, data=data, method=method,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=300) as response:
                return json.load(response)["value"]
        except urllib.error.HTTPError as e:
            fail(f"WebDriver {method} {path}: {e.read().decode(errors='replace')[:500]}")

    def do(self, method, path, body=None):
        return self.call(method, f"/session/{self.session}{path}", body)

    def js(self, script, *args):
        return self.do("POST", "/execute/sync", {"script": script, "args": list(args)})

    def js_async(self, script, *args):
        """Runs `script`, which calls its last argument with the result."""
        return self.do("POST", "/execute/async", {"script": script, "args": list(args)})

    def choose_file(self, css, path):
        """Picks the local file `path` in the file input `css`, as a user would."""
        element = self.do("POST", "/element", {"using": "css selector", "value": css})
        element_id = next(iter(element.values()))
        self.do("POST", f"/element/{element_id}/value", {"text": path})

    def text(self, testid):
        return self.js("const e = document.querySelector(`[data-testid='${arguments[0]}']`);"
                       "return e ? e.textContent : null;", testid)

    def open(self, url):
        self.do("POST", "/url", {"url": url})

    def wait(self, what, condition, timeout=240):
        """Polls the JS `condition` until it is true; on timeout fails showing the page's error."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.js(f"return Boolean({condition});"):
                return
            time.sleep(0.25)
        fail(f"timed out after {timeout} s waiting for {what}; the page says: {self.text('error')!r}")

    def screenshot(self, name, width, height):
        self.do("POST", "/window/rect", {"width": width, "height": height})
        time.sleep(0.5)
        png = base64.b64decode(self.do("GET", "/screenshot"))
        with open(os.path.join(SHOTS, name), "wb") as f:
            f.write(png)

    def close(self):
        OPEN_SESSIONS.remove(self)
        self.do("DELETE", "")


# Browsers still open; a failing test closes them, or Chromium outlives its chromedriver.
OPEN_SESSIONS = []


def stop_children(children):
    """Closes the browsers still open (best effort: the test may be failing), then kills `children`."""
    for session in list(OPEN_SESSIONS):
        try:
            session.close()
        except BaseException:  # noqa: B036 - a dead chromedriver must not hide the test's own error
            pass
    for child in children:
        child.kill()


def start_browser_tools(children):
    """Starts chromedriver (added to `children`) once the tools are there; returns its URL."""
    for tool in ["chromedriver", CHROMIUM]:
        if not shutil.which(tool):
            fail(f"{tool} is not installed (Debian: apt-get install chromium chromium-driver)")
    driver_port = free_port()
    children.append(subprocess.Popen(["chromedriver", f"--port={driver_port}"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    driver_url = f"http://127.0.0.1:{driver_port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(driver_url + "/status", timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return driver_url


def close_enough(got, want):
    return all(abs(g - w) <= ABS + REL * abs(w) for g, w in zip(got, want)) and len(got) == len(want)


def main():
    for need, hint in [(BINARY, "cargo build --release -p autoprog-trainer"),
                       (os.path.join(ROOT, "www", "pkg", "autoprog_viewer_bg.wasm"), "www/build.sh")]:
        if not os.path.exists(need):
            fail(f"{need} is missing; build it with `{hint}`")
    os.makedirs(SHOTS, exist_ok=True)
    work = tempfile.mkdtemp(prefix="autoprog-e2e-")
    children = []
    try:
        # A small auto run: 2 stages, a one-epoch search over resolutions and depths (the
        # anchored space: the thrifty default would not search at stage 0); seconds on lavapipe.
        run_dir = os.path.join(work, "tiny-auto")
        run("train", "--schedule", "auto", "--stages", "2", "--search-epochs", "1", "--search-cost", "flops",
            "--search-space", "anchored",
            "--res-scale", "0.5", "--epochs", "3", "--train-images", "320", "--val-images", "64", "--batch", "32",
            "--quiet", "--out", run_dir)
        summary = json.load(open(os.path.join(run_dir, "summary.json")))
        winners = [json.loads(line)["winner"] for line in open(os.path.join(run_dir, "log.jsonl"))
                   if '"event":"search"' in line]
        if not winners:
            fail("the fixture run made no search")
        model = os.path.join(run_dir, "model.safetensors")
        run("export", "--checkpoint", os.path.join(run_dir, "checkpoints", "last.safetensors"),
            "--ema", "0.995", "--out", model)
        shutil.copy(IMAGE, os.path.join(run_dir, "image.png"))
        # A valid safetensors file that holds no ViT.
        header = json.dumps({"weights": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}).encode()
        with open(os.path.join(run_dir, "foreign.safetensors"), "wb") as f:
            f.write(len(header).to_bytes(8, "little") + header + b"\0\0\0\0")
        native = json.loads(run("predict", "--checkpoint", model, IMAGE, "--json"))[0]
        hostile = hostile_models(model, run_dir)

        # The same run without summary.json: the stage count must then come from the log.
        bare = os.path.join(work, "tiny-auto-log-only")
        os.makedirs(bare)
        shutil.copy(os.path.join(run_dir, "log.jsonl"), bare)

        # Runs for the error paths and the load-time bar.
        broken = os.path.join(work, "broken")
        os.makedirs(broken)
        with open(os.path.join(broken, "log.jsonl"), "w") as f:
            f.write("this is not a log\n{\"event\": \"step\", \"step\":")
        big = os.path.join(work, "big")
        os.makedirs(big)
        with open(os.path.join(big, "log.jsonl"), "w") as f:
            for step in range(100_000):
                f.write(json.dumps({"event": "step", "step": step, "epoch": step // 1000, "loss": 2.0 / (1 + step / 5e3),
                                    "lr": 1e-3, "images_per_second": 100.0, "resolution": 32, "depth": 6}) + "\n")

        port = free_port()
        server = subprocess.Popen([BINARY, "serve", run_dir, bare, broken, big, "--port", str(port), "--www",
                                   os.path.join(ROOT, "www")], stdout=subprocess.PIPE, text=True)
        children.append(server)
        base = server.stdout.readline().strip()
        if not base.startswith("http://127.0.0.1:"):
            fail(f"autoprog serve printed {base!r} instead of its URL")
        driver_url = start_browser_tools(children)

        deep_link = f"{base}?run=tiny-auto&model=runs/tiny-auto/model.safetensors&image=runs/tiny-auto/image.png"
        modes = [("webgpu", ["--enable-unsafe-webgpu", "--enable-features=Vulkan", "--use-webgpu-adapter=swiftshader"]),
                 ("cpu", ["--disable-features=WebGPU", "--disable-gpu"])]
        sample_logits = {}
        for backend, args in modes:
            browser = WebDriver(driver_url, args, tempfile.mkdtemp(dir=work))
            browser.open(deep_link)
            browser.wait("the page to finish its deep link", "document.body.dataset.ready === 'true'")
            error = browser.text("error")
            if error:
                fail(f"[{backend}] the page shows an error: {error}")
            checks = {
                "stage-count": (browser.text("stage-count"), str(len(summary["stages"]))),
                "search-winner": (browser.js("return [...document.querySelectorAll(\"[data-testid='search-winner']\")]"
                                             ".map(e => e.textContent);"), winners),
                "backend": (browser.text("backend"), backend),
                "top1": (browser.text("top1"), native["top"][0]["label"]),
            }
            for name, (got, want) in checks.items():
                if got != want:
                    fail(f"[{backend}] {name} is {got!r}, expected {want!r}")
            logits = json.loads(browser.text("logits"))
            if not close_enough(logits, native["logits"]):
                fail(f"[{backend}] browser logits {logits} differ from native {native['logits']} "
                     f"beyond rel {REL} / abs {ABS}")
            worst = max(abs(g - w) / max(abs(w), 1e-12) for g, w in zip(logits, native["logits"]))
            print(f"[{backend}] stage-count {checks['stage-count'][0]}, winners {winners}, top1 "
                  f"{checks['top1'][0]}, logits max rel diff {worst:.2e}")
            browser.screenshot(f"viewer-{backend}-1280x800.png", 1280, 800)
            browser.screenshot(f"viewer-{backend}-1280-tall.png", 1280, 4200)
            # A built-in sample next: on WebGPU its forward pass is the one the first
            # prediction recorded, replayed on the new image; it must agree with the CPU twin.
            shown = browser.text("logits")
            browser.js("document.querySelector('#samples button').click();")
            browser.wait("a built-in sample's prediction",
                         f"!['', {json.dumps(shown)}].includes(document.querySelector(\"[data-testid='logits']\")"
                         ".textContent)")
            sample_logits[backend] = json.loads(browser.text("logits"))
            if backend == "cpu":
                browser.screenshot("viewer-phone-390x844.png", 390, 844)
                robustness(browser, base, str(len(summary["stages"])), winners, hostile)
            browser.close()
        if not close_enough(sample_logits["webgpu"], sample_logits["cpu"]):
            fail(f"a built-in sample's logits on WebGPU (a replayed forward pass) {sample_logits['webgpu']} differ "
                 f"from the CPU twin's {sample_logits['cpu']} beyond rel {REL} / abs {ABS}")
        print("a built-in sample: WebGPU's replayed forward pass agrees with the CPU twin")
        print(f"viewer end-to-end test passed; screenshots in {SHOTS}")
    finally:
        stop_children(children)
        shutil.rmtree(work, ignore_errors=True)


def read_safetensors(path):
    """(header dict, data bytes) of a safetensors file."""
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def write_safetensors(path, header, tensors):
    """Writes `header`'s metadata and `tensors` ({name: (dtype, shape, bytes)}) as safetensors."""
    out, data = {"__metadata__": header.get("__metadata__", {})}, b""
    for name, (dtype, shape, raw) in tensors.items():
        out[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(out).encode()
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little") + text + data)


def hostile_models(model, run_dir):
    """Damaged copies of the exported model next to it, each with the error the page must
    show: [(what, file name, expected text)]."""
    header, data = read_safetensors(model)
    tensors = {name: (e["dtype"], e["shape"], data[e["data_offsets"][0]:e["data_offsets"][1]])
               for name, e in header.items() if name != "__metadata__"}
    dim = tensors["pos_embed"][1][2]
    vit = json.loads(header["__metadata__"]["vit"])
    cases = []
    for what, name, shape, expect in [
        ("a scalar head.weight", "head.weight", [], "head.weight"),
        ("an empty position embedding", "pos_embed", [1, 0, dim], "pos_embed"),
        ("a zero-element head of 2^31 columns", "head.weight", [0, 2 ** 31], "head.weight"),
    ]:
        changed = dict(tensors)
        count = 1
        for d in shape:
            count *= d
        changed[name] = ("F32", shape, b"\0" * 4 * count)
        file = f"hostile-{len(cases)}.safetensors"
        write_safetensors(os.path.join(run_dir, file), header, changed)
        cases.append((what, file, expect))
    for field in ["depth", "dim"]:
        changed_header = json.loads(json.dumps(header))
        changed_header["__metadata__"]["vit"] = json.dumps({**vit, field: 10 ** 9})
        file = f"hostile-{len(cases)}.safetensors"
        write_safetensors(os.path.join(run_dir, file), changed_header, tensors)
        cases.append((f"metadata claiming {field} 10^9", file, f"{field} 1000000000 is above"))
    return cases


def robustness(browser, base, stage_count, winners, hostile):
    """The log alone tells the stages; bad input shows a readable error and the page goes on
    working; a long log loads fast and draws inside its charts."""
    browser.open(base + "?run=tiny-auto-log-only")
    browser.wait("the run without summary.json", "document.body.dataset.ready === 'true'")
    got = (browser.text("stage-count"), browser.js("return [...document.querySelectorAll(\"[data-testid='search-winner']\")]"
                                                    ".map(e => e.textContent);"))
    if got != (stage_count, winners) or browser.text("error"):
        fail(f"from log.jsonl alone the page shows stages/winners {got} (expected {(stage_count, winners)}), "
             f"error {browser.text('error')!r}")
    cases = [
        ("a malformed log", "?run=broken", "log.jsonl has nothing to show"),
        ("a run that is not served", "?run=nope", 'run "nope" has no log.jsonl on this server'),
        ("a model file that is not a model", "?model=runs/tiny-auto/log.jsonl", "not a safetensors file"),
        ("a model of an unknown architecture", "?model=runs/tiny-auto/foreign.safetensors", "not a ViT model"),
        ("an image that is not an image", "?image=runs/tiny-auto/summary.json", "not an image the browser can decode"),
        ("a training link without WebGPU", "?train=micro&epochs=1", "training needs WebGPU"),
    ]
    cases += [(what, f"?model=runs/tiny-auto/{file}", expect) for what, file, expect in hostile]
    for what, query, expect in cases:
        browser.open(base + query)
        browser.wait(f"the page to load {what}", "document.body.dataset.ready === 'true'")
        error = browser.text("error") or ""
        if expect not in error:
            fail(f"{what} ({query}): expected an error mentioning {expect!r}, the page shows {error!r}")
        print(f"[cpu] {what}: {error}")
        if query.startswith("?train=") and not (browser.text("train-status") or "").startswith("error: training needs"):
            fail(f"{what}: train-status is {browser.text('train-status')!r}, expected the error")
    # Still usable after the last error: pick the good run from the list.
    browser.js("const s = document.getElementById('run-select'); s.value = 'tiny-auto';"
               "s.dispatchEvent(new Event('change'));")
    browser.wait("the run picked after an error", "document.querySelector(\"[data-testid='stage-count']\").textContent !== ''")
    if browser.text("error"):
        fail(f"the error stayed after a good action: {browser.text('error')!r}")
    browser.open(base + "?run=big")
    browser.wait("the 100 000-event log", "document.body.dataset.ready === 'true'")
    ms = float(browser.js("return document.body.dataset.runLoadMs || 'NaN';"))
    if not ms < 2000:
        fail(f"a log of 100 000 events took {ms:.0f} ms to load and draw (bar: < 2000 ms); error: {browser.text('error')!r}")
    # Every point of every curve lies inside the 640-unit-wide charts.
    outside = browser.js("""
        const xs = [...document.querySelectorAll('#panel-curves path')]
            .flatMap(p => [...p.getAttribute('d').matchAll(/[ML](-?[0-9.]+),/g)].map(m => Number(m[1])));
        return xs.length ? xs.filter(x => !(x >= 0 && x <= 640)).length : -1;""")
    if outside != 0:
        fail(f"the 100 000-event log's curves: {outside} points outside the chart (-1: no curve drawn)")
    print(f"[cpu] a log of 100 000 events loaded and drawn in {ms:.0f} ms, inside its charts")


if __name__ == "__main__":
    main()
