#!/usr/bin/env python3
"""PyTorch reference for progressive schedules and recipes (BENCHMARKS.md).

Trains timm's VisionTransformer in the `quick` recipe (nano: width 64, 6 blocks of 4 heads,
patch 4; AdamW lr 1e-3, weight decay 0.05, batch 32, half an epoch of warmup then a cosine
to 1e-5, label smoothing 0.1, horizontal flips, gradient norm clipped at 1) through a
schedule of stages, growing depth by MoGrow's interleaved duplication of the current weights (AdamW
moments copied along) and changing the input resolution. Validation runs at the last
stage's resolution.

    cargo run --release --example export_procedural -- /tmp/builtin 15000 1000
    python3 scripts/torch_progressive.py /tmp/builtin --epochs 4 --stages 0:16:3,1:16:4,2:16:5,3:16:6

The digits recipe of configs/digits.toml (random-resized crops of 60-100% of the area, no
flips, drop-path 0.1, one epoch of warmup, an EMA of 0.998):

    python3 scripts/fetch_digits.py data/digits
    python3 scripts/torch_progressive.py data/digits --epochs 30 --stages 0:28:6 --no-hflip \
        --crop-scale 0.6 --drop-path 0.1 --warmup 1 --ema 0.998

`--stages` lists `start_epoch:resolution:depth`; one stage (the default) is the `none`
schedule. Needs torch, timm and pillow.
"""
import argparse
import copy
import math
import os

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def load_split(root, split):
    """An ImageFolder split as ([N, 3, H, W] floats in [0, 1], labels), files in name order."""
    classes = sorted(os.listdir(os.path.join(root, split)))
    items = []
    for label, c in enumerate(classes):
        for name in os.listdir(os.path.join(root, split, c)):
            items.append((name, label, os.path.join(root, split, c, name)))
    items.sort()
    images = np.stack([np.asarray(Image.open(p).convert("RGB")) for _, _, p in items])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return x, torch.tensor([label for _, label, _ in items])


def random_resized_crop(x, min_area):
    """Per image: a crop of a uniform fraction [min_area, 1] of the area with an aspect ratio
    in [3/4, 4/3] (log-uniform), at a uniform position inside the image, resized back."""
    b = x.shape[0]
    area = torch.empty(b).uniform_(min_area, 1.0)
    ratio = torch.empty(b).uniform_(math.log(3 / 4), math.log(4 / 3)).exp()
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = w, h
    theta[:, 0, 2], theta[:, 1, 2] = (torch.rand(b) * 2 - 1) * (1 - w), (torch.rand(b) * 2 - 1) * (1 - h)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", align_corners=False)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", help="ImageFolder with train/ and val/ (export_procedural writes one)")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--stages", default="0:16:6", help="start_epoch:resolution:depth,...")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--warmup", type=float, default=0.5, help="epochs of linear warmup")
    p.add_argument("--no-hflip", action="store_true")
    p.add_argument("--crop-scale", type=float, default=1.0,
                   help="random-resized crops of this fraction of the area and more (1: no crops)")
    p.add_argument("--crop-to-final", action="store_true",
                   help="in stages below the last resolution, crops down to (resolution / last)^2 of the area")
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--ema", type=float, default=0.0, help="also evaluate an EMA of the weights with this decay")
    p.add_argument("--decay-matrices-only", action="store_true",
                   help="no weight decay on biases, norms, the class token and the position embedding (as autoprog)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    torch.set_num_threads(a.threads)
    stages = [tuple(int(v) for v in s.split(":")) for s in a.stages.split(",")]
    assert stages[0][0] == 0, "the first stage starts at epoch 0"
    x_train, y_train = load_split(a.data, "train")
    x_val, y_val = load_split(a.data, "val")
    x_train, x_val = (x_train - MEAN) / STD, (x_val - MEAN) / STD
    resized = {}

    def at(res, split):
        if (res, split) not in resized:
            x = x_train if split == "train" else x_val
            resized[(res, split)] = F.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        return resized[(res, split)]

    lr, batch, n = 1e-3, a.batch, len(y_train)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=stages[-1][1], patch_size=4, num_classes=10, embed_dim=64, depth=stages[0][2], num_heads=4,
        mlp_ratio=4, dynamic_img_size=True, drop_path_rate=a.drop_path)

    def optimizer():
        if not a.decay_matrices_only:
            return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
        def decayed(name, param):
            return param.ndim >= 2 and name not in ("cls_token", "pos_embed")
        named = list(model.named_parameters())
        matrices = [param for name, param in named if decayed(name, param)]
        flat = [param for name, param in named if not decayed(name, param)]
        return torch.optim.AdamW([{"params": matrices}, {"params": flat, "weight_decay": 0.0}], lr=lr, weight_decay=0.05)

    opt = optimizer()
    ema = copy.deepcopy(model).eval() if a.ema else None
    per_epoch = n // batch
    total, warmup = a.epochs * per_epoch, int(a.warmup * per_epoch)
    step, cost, full_cost = 0, 0.0, 0.0
    for epoch in range(a.epochs):
        _, res, depth = [s for s in stages if s[0] <= epoch][-1]
        if depth != len(model.blocks):
            old = len(model.blocks)
            # MoGrow's interleaved duplication (the official new_idx): the last
            # depth - old blocks are the ones that get a copy right after themselves.
            mapping = [i for i in range(old) for _ in range(2 if i >= 2 * old - depth else 1)]
            sources = [model.blocks[i] for i in mapping]
            model.blocks = torch.nn.Sequential(*[copy.deepcopy(b) for b in sources])
            grown = optimizer()
            for new_block, old_block in zip(model.blocks, sources):
                for new_p, old_p in zip(new_block.parameters(), old_block.parameters()):
                    if old_p in opt.state:
                        grown.state[new_p] = {k: v.clone() for k, v in opt.state[old_p].items()}
            for name, param in model.named_parameters():
                if not name.startswith("blocks.") and param in opt.state:
                    grown.state[param] = opt.state[param]
            opt = grown
            if ema is not None:
                ema.blocks = torch.nn.Sequential(*[copy.deepcopy(ema.blocks[i]) for i in mapping])
            print(f"epoch {epoch}: grew {old} -> {depth} blocks, new layer j from old layer {mapping}")
        x = at(res, "train")
        model.train()
        order = torch.randperm(n)
        for i in range(per_epoch):
            idx = order[i * batch:(i + 1) * batch]
            xb, yb = x[idx], y_train[idx]
            crop_scale = min(a.crop_scale, (res / stages[-1][1]) ** 2) if a.crop_to_final else a.crop_scale
            if crop_scale < 1:
                xb = random_resized_crop(xb, crop_scale)
            if not a.no_hflip:
                flip = torch.rand(batch) < 0.5
                xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(3), xb)
            if step < warmup:
                current = lr * (step + 1) / warmup
            else:
                current = 1e-5 + 0.5 * (lr - 1e-5) * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            for g in opt.param_groups:
                g["lr"] = current
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            if ema is not None:
                with torch.no_grad():
                    for e, w in zip(ema.parameters(), model.parameters()):
                        e.mul_(a.ema).add_(w, alpha=1 - a.ema)
            step += 1
            tokens = (res // 4) ** 2 + 1
            cost += depth * tokens
            full_cost += stages[-1][2] * ((stages[-1][1] // 4) ** 2 + 1)
        model.eval()
        with torch.no_grad():
            acc = (model(at(stages[-1][1], "val")).argmax(1) == y_val).float().mean().item()
            ema_acc = f"  ema {(ema(at(stages[-1][1], 'val')).argmax(1) == y_val).float().mean().item():.4f}" if ema else ""
        print(f"epoch {epoch + 1}/{a.epochs}  {res} px, {depth} blocks  val_acc {acc:.4f}{ema_acc}", flush=True)
    print(f"stages {a.stages}  seed {a.seed}  val_acc {acc:.4f}{ema_acc}  block-token cost {cost / full_cost:.3f} of none")


if __name__ == "__main__":
    main()
