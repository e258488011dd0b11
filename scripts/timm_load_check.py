#!/usr/bin/env python3
"""Checks that autoprog's weights load into timm: builds timm's VisionTransformer from the
checkpoint's own config, loads the timm-named tensors with strict=True (optimizer state
and EMAs, stored under prefixes, are left out), and compares its logits on an image with
`autoprog predict --json` on the same checkpoint and image.

    python3 scripts/timm_load_check.py CHECKPOINT IMAGE   (needs torch, timm, safetensors, pillow)
"""
import json
import subprocess
import sys

import numpy as np
import timm
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file


def main(checkpoint, image):
    with safe_open(checkpoint, "pt") as f:
        meta = f.metadata()
    vit = json.loads(meta["vit"])
    mean = torch.tensor(json.loads(meta.get("mean", "[0.485, 0.456, 0.406]"))).view(1, 3, 1, 1)
    std = torch.tensor(json.loads(meta.get("std", "[0.229, 0.224, 0.225]"))).view(1, 3, 1, 1)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=vit["image_size"], patch_size=vit["patch_size"], in_chans=vit["in_chans"],
        num_classes=vit["classes"], embed_dim=vit["dim"], depth=vit["depth"], num_heads=vit["heads"],
        mlp_ratio=vit["mlp_hidden"] / vit["dim"], qkv_bias=True,
    )
    tensors = {k: v for k, v in load_file(checkpoint).items() if k in model.state_dict()}
    model.load_state_dict(tensors, strict=True)
    model.eval()
    # torchvision's preprocessing of PIL images: PIL's bilinear resize (antialiased when
    # shrinking), which `autoprog predict` reproduces.
    side = vit["image_size"]
    pixels = np.asarray(Image.open(image).convert("RGB").resize((side, side), Image.BILINEAR))
    x = torch.from_numpy(pixels.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    with torch.no_grad():
        theirs = model((x - mean) / std)[0]
    out = subprocess.run(["target/release/autoprog", "predict", "--checkpoint", checkpoint, "--json", image],
                         check=True, capture_output=True, text=True).stdout
    ours = torch.tensor(json.loads(out)[0]["logits"])
    rel = ((ours - theirs).abs() / theirs.abs().clamp_min(1e-6)).max().item()
    print(f"loaded {len(tensors)} tensors into timm (strict); max relative logit difference {rel:.2e}")
    print("timm  ", [round(v, 5) for v in theirs.tolist()])
    print("ours  ", [round(v, 5) for v in ours.tolist()])
    sys.exit(0 if torch.allclose(ours, theirs, rtol=1e-4, atol=1e-5) else 1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
