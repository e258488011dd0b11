"""PyTorch reference for `autoprog bench --train`: training-step throughput of the same ViTs.

Builds timm's VisionTransformer as our presets (nano: width 64, 6 blocks of 4 heads; tiny:
width 192, 12 blocks of 3 heads; both at 32 px with 4 px patches, 10 classes) and times whole
steps as `autoprog bench` does: forward, label-smoothed cross-entropy, backward, gradient
clipping at norm 1, AdamW and one EMA update, waiting for each step to finish. f32 with TF32
off (what our kernels compute), eager mode. Prints JSON like the `train_step` bench entries.

    python3 scripts/torch_train_step.py --batch 64
"""

import argparse
import json
import statistics
import time

import timm
import torch
import torch.nn.functional as F

PRESETS = {"nano": (64, 6, 4), "tiny": (192, 12, 3)}


def time_steps(name, batch, reps, device):
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

    def step():
        loss = F.cross_entropy(model(images), labels, label_smoothing=0.1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
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
        "images_per_second": batch / (ms / 1e3), "variant": f"torch {torch.__version__} eager f32",
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, action="append", help="images per step (repeatable; default 64)")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    results = [time_steps(name, batch, args.reps, args.device) for name in PRESETS for batch in (args.batch or [64])]
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
