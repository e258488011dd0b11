"""PyTorch reference for `autoprog bench`: matmul throughput on the CUDA device at hand.

Times C = op(A)·op(B) in the NN, NT and TN layouts at the given square sizes with TF32 off
(true f32, what our WGSL kernels compute), for context with TF32 on, and in f16 (tensor
cores, f32 accumulation; named `matmul_nn_f16` etc., beside our cooperative-matrix variant). Each case: three
warm-up products, then the median of `--reps` products timed with CUDA events. Prints one
JSON array shaped like `autoprog bench --json`'s matmul entries.

    python3 scripts/torch_matmul.py --size 4096
"""

import argparse
import json
import statistics

import torch


def time_product(a, b, layout, reps):
    def product():
        if layout == "nn":
            return a @ b
        if layout == "nt":
            return a @ b.t()
        return a.t() @ b

    for _ in range(3):
        product()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        product()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times), min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, action="append", help="square size (repeatable; default 1024 and 4096)")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args()
    sizes = args.size or [1024, 4096]
    if not torch.cuda.is_available():
        raise SystemExit("torch_matmul.py needs a CUDA device; none is visible to PyTorch")
    results = []
    # (our name's suffix, the variant's name, element type, TF32 allowed)
    precisions = (("", "f32", torch.float32, False), ("", "tf32", torch.float32, True),
                  ("_f16", "f16", torch.float16, False))
    for suffix, variant, dtype, tf32 in precisions:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        for n in sizes:
            generator = torch.Generator(device="cuda").manual_seed(0)
            a = (torch.rand(n, n, device="cuda", generator=generator) - 0.5).to(dtype)
            b = (torch.rand(n, n, device="cuda", generator=generator) - 0.5).to(dtype)
            for layout in ("nn", "nt", "tn"):
                ms, best = time_product(a, b, layout, args.reps)
                results.append({
                    "name": f"matmul_{layout}{suffix}",
                    "m": n, "n": n, "k": n,
                    "ms": ms, "min_ms": best,
                    "gflops": 2 * n**3 / (ms * 1e6),
                    "variant": f"torch {torch.__version__} cuBLAS {variant}",
                    "device": torch.cuda.get_device_name(),
                })
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
