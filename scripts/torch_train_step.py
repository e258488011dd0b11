"""PyTorch reference for `autoprog bench --train`: training-step throughput of the same ViTs.

Builds timm's VisionTransformer as our presets (nano: width 64, 6 blocks of 4 heads; tiny:
width 192, 12 blocks of 3 heads; both at 32 px with 4 px patches, 10 classes) and times whole
steps as `autoprog bench` does: forward, label-smoothed cross-entropy, backward, gradient
clipping at norm 1, AdamW and one EMA update, waiting for each step to finish. f32 with TF32
off (what our kernels compute), eager mode; `--precision bf16` / `f16` add the same steps under
`torch.autocast` (f16 with a GradScaler, as mixed precision is trained). Prints JSON like the
`train_step` bench entries.

    python3 scripts/torch_train_step.py --batch 64 --precision f32 --precision bf16
"""

import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn.functional as F

PRESETS = {"nano": (64, 6, 4), "tiny": (192, 12, 3)}


AUTOCAST = {"bf16": torch.bfloat16, "f16": torch.float16}


def time_steps(name, batch, reps, device, precision="f32"):
    dim, depth, heads = PRESETS[name]
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=32, patch_size=4, num_classes=10, embed_dim=dim, depth=depth, num_heads=heads,
        mlp_ratio=4.0, qkv_bias=True, drop_path_rate=0.1,
    ).to(device)
    ema = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    generator = torch.Generator(device=device).manual_seed(0)
    images = torch.rand(batch, 3, 32, 32, device=device, generator=generator) * 2 - 1
    labels = torch.arange(batch, device=device) % 10

    dtype = AUTOCAST.get(precision)
    scaler = torch.amp.GradScaler(device, enabled=precision == "f16")

    def step():
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in model.parameters()], 1 - 0.999)
        return loss.item()  # waits for the step, as our bench reads the loss back

    for _ in range(5):
        step()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    ms = statistics.median(times)
    return {
        "name": "train_step", "shape": f"{name} R32 P4 B{batch}", "ms": ms, "min_ms": min(times),
        "images_per_second": batch / (ms / 1e3), "variant": f"torch {torch.__version__} eager {precision if dtype else 'f32'}"
        + (" autocast" if dtype else ""),
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append", help="images per step (repeatable; default 64)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", action="append", choices=["f32", *AUTOCAST],
                        help="f32 (TF32 off) or autocast to bf16 / f16 (repeatable; default f32)")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = [
        time_steps(name, batch, args.reps, args.device, precision)
        for name in PRESETS
        for batch in (args.batch or [64])
        for precision in (args.precision or ["f32"])
    ]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
