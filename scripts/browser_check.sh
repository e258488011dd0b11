#!/usr/bin/env bash
# Loads the viewer page (www/, built by www/build.sh) in headless Chromium with WebGPU
# (SwiftShader) through chromedriver's WebDriver API, and checks that the GELU kernel ran
# on the browser's GPU and matched its CPU twin. Prints the page's result; exits non-zero
# on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

port_http=18765
port_driver=18766
profile=$(mktemp -d /tmp/autoprog-chromium.XXXXXX)
python3 -m http.server "$port_http" --bind 127.0.0.1 -d www >/dev/null 2>&1 &
server=$!
chromedriver --port="$port_driver" >/dev/null 2>&1 &
driver=$!
trap 'kill $server $driver 2>/dev/null; rm -rf "$profile"' EXIT

wd="http://127.0.0.1:$port_driver"
for _ in $(seq 50); do curl -sf "$wd/status" >/dev/null && break; sleep 0.2; done

caps=$(cat <<JSON
{"capabilities": {"alwaysMatch": {"browserName": "chrome", "goog:chromeOptions": {
  "binary": "/usr/bin/chromium",
  "args": ["--headless=new", "--no-sandbox", "--enable-unsafe-webgpu", "--enable-features=Vulkan",
           "--use-webgpu-adapter=swiftshader", "--disable-background-networking",
           "--disable-component-update", "--disable-sync", "--no-first-run", "--user-data-dir=$profile"]}}}}
JSON
)
session=$(curl -sf -X POST -H 'Content-Type: application/json' -d "$caps" "$wd/session" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["value"]["sessionId"])')
curl -sf -X POST -H 'Content-Type: application/json' -d "{\"url\": \"http://127.0.0.1:$port_http/index.html\"}" \
    "$wd/session/$session/url" >/dev/null

read_testid() {
    curl -sf -X POST -H 'Content-Type: application/json' \
        -d "{\"script\": \"return document.querySelector('[data-testid=\\\"$1\\\"]').textContent\", \"args\": []}" \
        "$wd/session/$session/execute/sync" | python3 -c 'import json,sys; print(json.load(sys.stdin)["value"])'
}

result=""
for _ in $(seq 120); do
    result=$(read_testid selfcheck)
    [ "$result" != "running…" ] && break
    sleep 0.5
done
error=$(read_testid error)
curl -sf -X DELETE "$wd/session/$session" >/dev/null || true

echo "browser: $result"
if [ -n "$error" ] || [[ "$result" != *"matches its CPU twin"* ]]; then
    echo "error: the viewer's kernel self-check failed in Chromium: ${error:-$result}" >&2
    exit 1
fi
