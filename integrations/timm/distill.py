"""Quantize a timm model with QuantSR and distil it from its float self on real images.

    python integrations/timm/distill.py --model resnet18 --bits 4 --depths 2 1 --steps 40
    python integrations/timm/distill.py --model vit_tiny_patch16_224 --checkpoint vit.pth

Without --checkpoint or --pretrained the weights are random (this machine has no hub
access), which exercises the pipeline but says nothing about accuracy. Images: any folder
(--images), or the photographs bundled with scikit-image.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys

import torch

import qsr_plugin
from qsr_plugin.integrations.timm import agreement, distill, image_batches
from qsr_plugin.sr_data import builtin_images, load_hr_images


def parse_arguments(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18", help="timm model name")
    parser.add_argument("--checkpoint", help="local weights for timm.create_model")
    parser.add_argument("--pretrained", action="store_true", help="download timm weights")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--depths", type=int, nargs="*", default=None, help="depth variants")
    parser.add_argument("--images", help="folder of images (default: scikit-image photos)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_arguments(argv)
    torch.manual_seed(args.seed)
    import timm

    if not timm.is_model(args.model):
        print(f"error: {args.model!r} is not a timm model", file=sys.stderr)
        return 2
    teacher = timm.create_model(
        args.model, pretrained=args.pretrained, checkpoint_path=args.checkpoint or ""
    )
    images = (
        [image for _, image in load_hr_images(args.images)]
        if args.images
        else [*builtin_images()["train"].values(), *builtin_images()["heldout"].values()]
    )
    batches = image_batches(teacher, images)
    student = qsr_plugin.quantize(
        copy.deepcopy(teacher), bits=args.bits, depth_variants=args.depths
    )
    qsr_plugin.calibrate(student, batches)
    before = agreement(student, teacher, batches)
    history = distill(student, teacher, batches, steps=args.steps, lr=args.lr)
    after = agreement(student, teacher, batches)
    print(qsr_plugin.summary(student).splitlines()[2])
    print(
        json.dumps(
            {"before": before, "after": after, "loss": history[:: max(1, args.steps // 8)]},
            indent=2,
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
