#!/usr/bin/env python3
"""Writes the timm reference fixtures in tests/fixtures/timm/ that trainer/tests/timm.rs
compares `autoprog debug-step` and `autoprog predict` against.

A timm VisionTransformer whose sizes fit no tile (28 px input, patch 4, width 48, 3 heads,
2 blocks, 10 classes), its weights nudged off timm's initialisation so that no gradient is
trivially zero, one batch with its loss, logits and every gradient (plain mean
cross-entropy, eval mode: no dropout or drop-path), and one image file with the logits of
PyTorch's preprocessing (decode, scale to [0, 1], bilinear resize with
align_corners=False, ImageNet normalisation).

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch timm safetensors pillow
    /tmp/ref/bin/python scripts/timm_reference.py
"""
import os

import numpy as np
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "timm")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(0)
    model = timm.models.vision_transformer.VisionTransformer(
        img_size=28, patch_size=4, in_chans=3, num_classes=10, embed_dim=48, depth=2, num_heads=3,
        mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token",
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(OUT, "vit.safetensors"))

    images = torch.randn(4, 3, 28, 28)
    labels = torch.tensor([3, 0, 9, 5], dtype=torch.int64)
    save_file({"images": images, "labels": labels}, os.path.join(OUT, "batch.safetensors"))
    logits = model(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    reference = {"loss": loss.detach().reshape([]), "logits": logits.detach()}
    reference.update({name: p.grad.detach().contiguous() for name, p in model.named_parameters()})
    save_file(reference, os.path.join(OUT, "step_reference.safetensors"))

    # An image of another size than the model's: 40 x 30 RGB.
    y, x = np.mgrid[0:30, 0:40]
    pixels = np.stack([(x * 6) % 256, (y * 8) % 256, ((x + y) * 5) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(OUT, "image.png"))
    tensor = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    tensor = F.interpolate(tensor, size=(28, 28), mode="bilinear", align_corners=False)
    with torch.no_grad():
        predict_logits = model((tensor - MEAN) / STD)
    save_file({"logits": predict_logits}, os.path.join(OUT, "predict_reference.safetensors"))
    print("timm", timm.__version__, "torch", torch.__version__, "loss", loss.item())


if __name__ == "__main__":
    main()
