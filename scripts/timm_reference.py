#!/usr/bin/env python3
"""Writes the timm reference fixtures in tests/fixtures/timm/ that trainer/tests/timm.rs
compares `autoprog debug-step` and `autoprog predict` against.

A timm VisionTransformer whose sizes fit no tile (28 px input, patch 4, width 48, 3 heads,
2 blocks, 10 classes), its weights nudged off timm's initialisation so that no gradient is
trivially zero, one batch with its loss, logits and every gradient (plain mean
cross-entropy, eval mode: no dropout or drop-path), and one image file with the logits of
the usual PyTorch preprocessing (PIL decode, PIL bilinear resize, which is antialiased when
shrinking, to [0, 1], ImageNet normalisation); and tests/fixtures/pil_resize.safetensors:
random images and PIL's bilinear resize of each, which our resize must match (to the bit
where Pillow resamples rows before columns, as we do).

    python3 -m venv /tmp/ref && /tmp/ref/bin/pip install torch timm safetensors pillow
    /tmp/ref/bin/python scripts/timm_reference.py            # every fixture
    /tmp/ref/bin/python scripts/timm_reference.py --predict  # keep the model, redo the rest
"""
import os
import sys

import numpy as np
import PIL
import timm
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "timm")
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def model_of_shape():
    return timm.models.vision_transformer.VisionTransformer(
        img_size=28, patch_size=4, in_chans=3, num_classes=10, embed_dim=48, depth=2, num_heads=3,
        mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token",
    )


def step_fixtures():
    torch.manual_seed(0)
    model = model_of_shape()
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
    print("loss", loss.item())


def predict_fixtures():
    model = model_of_shape()
    model.load_state_dict(load_file(os.path.join(OUT, "vit.safetensors")))
    model.eval()
    # An image of another size than the model's: 40 x 30 RGB.
    y, x = np.mgrid[0:30, 0:40]
    pixels = np.stack([(x * 6) % 256, (y * 8) % 256, ((x + y) * 5) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(pixels).save(os.path.join(OUT, "image.png"))
    resized = np.asarray(Image.open(os.path.join(OUT, "image.png")).convert("RGB").resize((28, 28), Image.BILINEAR))
    tensor = torch.from_numpy(resized.copy()).permute(2, 0, 1).unsqueeze(0).float() / 255.0
    with torch.no_grad():
        predict_logits = model((tensor - MEAN) / STD)
    save_file({"logits": predict_logits}, os.path.join(OUT, "predict_reference.safetensors"))

    # Random images shrunk, enlarged and both (one side each way), square and not.
    rng = np.random.default_rng(0)
    cases = {}
    for i, (w, h, ow, oh) in enumerate([(40, 30, 28, 28), (32, 32, 24, 24), (19, 13, 16, 16), (100, 77, 32, 32),
                                        (10, 10, 32, 32), (37, 53, 20, 11), (7, 64, 24, 24), (224, 224, 28, 28)]):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cases[f"in{i}"] = torch.from_numpy(image)
        cases[f"out{i}"] = torch.from_numpy(np.asarray(Image.fromarray(image).resize((ow, oh), Image.BILINEAR)).copy())
    save_file(cases, os.path.join(OUT, "..", "pil_resize.safetensors"))


def main():
    os.makedirs(OUT, exist_ok=True)
    if "--predict" not in sys.argv:
        step_fixtures()
    predict_fixtures()
    print("timm", timm.__version__, "torch", torch.__version__, "PIL", PIL.__version__)


if __name__ == "__main__":
    main()
