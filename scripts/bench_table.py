#!/usr/bin/env python3
"""Merges `autoprog bench --json` outputs and the PyTorch reference scripts' outputs into one
JSON file and one Markdown table: training steps (images/s, host ms per step, ours against
PyTorch at each model and batch) and matmuls (TFLOP/s at each layout and size).

    python3 scripts/bench_table.py --ours a.json b.json --torch t.json m.json --info info.json \
        --json all.json > table.md
"""

import argparse
import json


def load(paths):
    entries = []
    for path in paths or []:
        with open(path) as f:
            entries.extend(json.load(f))
    return entries


def train_rows(ours, torch):
    """One row per (model, batch): our f32 / f16 and PyTorch's f32 / bf16 / f16 images per second."""
    rows = {}
    for e in ours:
        if e.get("name") != "train_step":
            continue
        model, res, patch, batch, precision = e["shape"].split()
        row = rows.setdefault((model, int(batch[1:])), {})
        row[f"ours {precision}"] = e["images_per_second"]
        row[f"host ms {precision}"] = e.get("host_ms")
        row[f"gpu ms {precision}"] = e.get("gpu_ms")
    for e in torch:
        if e.get("name") != "train_step":
            continue
        model, res, patch, batch = e["shape"].split()
        precision = "f32" if "autocast" not in e["variant"] else e["variant"].split()[-2]
        rows.setdefault((model, int(batch[1:])), {})[f"torch {precision}"] = e["images_per_second"]
    return rows


def fmt(value, digits=0):
    return "–" if value is None else f"{value:,.{digits}f}"


def ratio(a, b):
    return None if a is None or b is None else a / b


def train_table(rows):
    head = ("| model | batch | ours f32 | ours f16 | torch f32 | torch bf16 | torch f16 | ours f32 / torch f32 "
            "| ours f16 / torch bf16 | host ms f32 | host ms f16 | GPU ms f32 | GPU ms f16 |")
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for (model, batch), r in sorted(rows.items()):
        cells = [model, str(batch), fmt(r.get("ours f32")), fmt(r.get("ours f16")), fmt(r.get("torch f32")),
                 fmt(r.get("torch bf16")), fmt(r.get("torch f16")),
                 fmt(ratio(r.get("ours f32"), r.get("torch f32")), 2),
                 fmt(ratio(r.get("ours f16"), r.get("torch bf16")), 2),
                 fmt(r.get("host ms f32"), 2), fmt(r.get("host ms f16"), 2),
                 fmt(r.get("gpu ms f32"), 1), fmt(r.get("gpu ms f16"), 1)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def matmul_table(ours, torch):
    lines = ["| case | size | TFLOP/s | variant |", "| --- | --- | --- | --- |"]
    for who, entries in (("ours", ours), ("torch", torch)):
        for e in entries:
            if e.get("name", "").startswith("matmul") and e.get("m") == e.get("n") == e.get("k"):
                lines.append(f"| {who} {e['name']} | {e['m']} | {e['gflops'] / 1e3:.3g} | {e['variant']} |")
            elif e.get("name", "").startswith("attention"):
                lines.append(f"| {who} {e['name']} | {e['shape']} | {e['gflops'] / 1e3:.3g} | {e['variant']} |")
    return lines


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ours", nargs="*", help="autoprog bench --json outputs")
    parser.add_argument("--torch", nargs="*", help="torch_train_step.py / torch_matmul.py outputs")
    parser.add_argument("--info", help="autoprog info --json output (names the adapter)")
    parser.add_argument("--json", required=True, help="where to write the merged JSON")
    args = parser.parse_args()
    ours, torch = load(args.ours), load(args.torch)
    info = None
    if args.info:
        with open(args.info) as f:
            info = json.load(f)
    with open(args.json, "w") as f:
        json.dump({"info": info, "ours": ours, "torch": torch}, f, indent=1)
    print("\n".join(["## Training steps (images/s)", "", *train_table(train_rows(ours, torch)), "",
                     "## Matmul and attention", "", *matmul_table(ours, torch)]))


if __name__ == "__main__":
    main()
