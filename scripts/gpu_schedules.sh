#!/usr/bin/env bash
# Issue 20's GPU measurement: the standard preset on the built-in data, `none` against `prog`
# and `auto`, two seeds (`autoprog compare`), spread over as many device calls as it takes.
# Each call trains for at most LIMIT_S seconds (default 480, leaving a 10-minute call time to
# set up and to save), then stops the comparison with SIGUSR1, which autoprog takes as Ctrl-C
# (a checkpoint, then exit; a repeat does no harm, where a second Ctrl-C quits at once). The
# next call on the same OUT folder (carried back to the device) keeps the finished runs and
# resumes the one that was cut short. A resumed run's wall time counts only its own training,
# whichever call and machine it ran in.
#
#   scripts/gpu_schedules.sh [OUT_DIR] [more compare options]     (default gpu-schedules/)
#
# The finished runs' checkpoints are deleted (the comparison needs their summaries only), so
# that OUT stays small enough to carry. When every run is done, OUT/compare.txt holds the table
# and OUT/compare.json the numbers. Needs an `autoprog` binary (AUTOPROG, default
# target/release/autoprog) and a Vulkan loader (scripts/gpu_env.sh). On the lent device, carry
# target/release/autoprog, scripts/debs and the gpu-schedules/ folder that the last call's files
# gave back (copied into the checkout), and run
#   mkdir -p gpu-schedules && cp -r gpu-schedules "$OUT"/ && scripts/gpu_schedules.sh "$OUT"/gpu-schedules
# At the 5600-5850 images/s the standard preset trained at on an H100 (BENCHMARKS.md, session 6),
# the six runs take about 20 minutes: more than one session's device time.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=${1:-gpu-schedules}
shift || true
autoprog=${AUTOPROG:-target/release/autoprog}
[ -x "$autoprog" ] || { echo "error: no autoprog binary at $autoprog; build it with cargo build --release -p autoprog-trainer or set AUTOPROG" >&2; exit 1; }
mkdir -p "$out"
. "$here/gpu_env.sh"
"$autoprog" info --json > "$out/info-$(date +%s).json"
set +e
timeout -s USR1 -k 60 "${LIMIT_S:-480}" "$autoprog" compare --preset standard --schedules none,prog,auto --seeds 2 \
    --out "$out" --quiet "$@" > "$out/compare.txt.partial" 2>> "$out/compare.log"
status=$?
set -e
tail -n 20 "$out/compare.log" >&2
for summary in "$out"/*/summary.json; do
    [ -e "$summary" ] && rm -rf "$(dirname "$summary")/checkpoints"
done
if [ "$status" -eq 0 ]; then
    mv "$out/compare.txt.partial" "$out/compare.txt"
    cat "$out/compare.txt"
elif [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    # 137: the run did not stop within a minute of the signal and was killed; it resumes from
    # its last checkpoint.
    rm -f "$out/compare.txt.partial"
    echo "stopped at the time limit (${LIMIT_S:-480} s); run this script again on $out to go on" >&2
    exit 3
else
    exit "$status"
fi
