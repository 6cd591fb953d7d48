"""Detector-style pre-training of a ResNet visual backbone on SynthRef scenes (the SynthRef analogue of the
reference's COCO-detection-pretrained Swin).

LGR-NET never trains its visual backbone from scratch: the reference starts from a Mask R-CNN Swin trained on COCO
(spec section 10), so the grounding layers receive features that already separate objects. No such weights exist
offline, and a from-scratch LGR-NET on SynthRef stays at chance for a long time (docs/synthref.md): the box head
learns text priors and ignores the image. This script gives the backbone the same head start on SynthRef's own
scene annotations (``scenes.jsonl``: every object's box, colour, shape and size) with a dense labelling task:
every cell of the stride-8 and stride-16 feature maps predicts the colour, shape and size class of the smallest
object box containing the cell centre (or background), with one 1x1 convolution per level and attribute.
Only the train split's scenes are used (val/testA/testB images are never seen).

The result is a DETR-layout safetensors file (``backbone.0.body.<name>``) that ``model.visual.checkpoint`` loads
(:func:`lgrnet.model.checkpoints.load_resnet_detr_checkpoint`), plus ``<out>.json`` with the run's figures::

    .venv/bin/python scripts/pretrain_synth_backbone.py --config configs/synthref-tiny.yaml \\
        --data data/synthref --minutes 10 --out runs/synthref-backbone/backbone.safetensors
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lgrnet.config import load_config
from lgrnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from lgrnet.model.visual import VisualExtractor
from lgrnet.synth.scene import COLORS, SHAPES, SIZES

ATTRIBUTES = {"color": list(COLORS), "shape": list(SHAPES), "size": list(SIZES)}


class SceneCells(Dataset):
    """Letterboxed scene images and, per level stride, the per-cell attribute labels (0 = background)."""

    def __init__(self, root: Path, split: str, image_size: int, strides: list[int], train: bool) -> None:
        self.root, self.size, self.strides, self.train = root, image_size, strides, train
        with open(root / "scenes.jsonl", encoding="utf-8") as fh:
            self.scenes = [s for s in map(json.loads, fh) if s["split"] == split]
        if not self.scenes:
            raise SystemExit(f"{root / 'scenes.jsonl'}: no scene of split {split!r}")
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
        scene = self.scenes[index]
        w, h = scene["width"], scene["height"]
        # Training: random scale (75-100% of the canvas) and placement, so that features do not tie an attribute
        # to a position; evaluation: the centred letterbox of the eval transform.
        rng = random if self.train else random.Random(index)
        target = self.size * (rng.uniform(0.75, 1.0) if self.train else 1.0)
        scale = target / max(w, h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        ox = rng.randint(0, self.size - nw) if self.train else (self.size - nw) // 2
        oy = rng.randint(0, self.size - nh) if self.train else (self.size - nh) // 2
        image = Image.open(self.root / scene["image"]).convert("RGB").resize((nw, nh), Image.BILINEAR)
        pixels = torch.zeros(3, self.size, self.size)
        pixels[:, oy:oy + nh, ox:ox + nw] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1) / 255.0
        pixels[:, oy:oy + nh, ox:ox + nw] = (pixels[:, oy:oy + nh, ox:ox + nw] - self.mean) / self.std
        labels: dict[str, list[torch.Tensor]] = {name: [] for name in ATTRIBUTES}
        objects = sorted(scene["objects"], key=lambda o: (o["box"][2] - o["box"][0]) * (o["box"][3] - o["box"][1]))
        for stride in self.strides:
            n = self.size // stride
            centres = (torch.arange(n) + 0.5) * stride
            ys, xs = torch.meshgrid((centres - oy) / scale, (centres - ox) / scale, indexing="ij")
            maps = {name: torch.zeros(n, n, dtype=torch.long) for name in ATTRIBUTES}
            taken = torch.zeros(n, n, dtype=torch.bool)
            for obj in objects:  # smallest box first: it wins where boxes overlap
                x0, y0, x1, y1 = obj["box"]
                inside = (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1) & ~taken
                for name, values in ATTRIBUTES.items():
                    maps[name][inside] = values.index(obj[name]) + 1
                taken |= inside
            for name in ATTRIBUTES:
                labels[name].append(maps[name])
        return pixels, labels


def collate(items: list) -> tuple[torch.Tensor, dict[str, list[torch.Tensor]]]:
    images = torch.stack([image for image, _ in items])
    labels = {name: [torch.stack([lab[name][i] for _, lab in items]) for i in range(len(items[0][1][name]))]
              for name in ATTRIBUTES}
    return images, labels


class CellHeads(nn.Module):
    """One 1x1 convolution per (level, attribute): the backbone must do the work."""

    def __init__(self, channels: list[int]) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({
            f"{name}_{i}": nn.Conv2d(c, len(values) + 1, kernel_size=1)
            for i, c in enumerate(channels) for name, values in ATTRIBUTES.items()
        })

    def forward(self, features: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        return {name: [self.heads[f"{name}_{i}"](f) for i, f in enumerate(features)] for name in ATTRIBUTES}


def losses_and_accuracy(logits: dict[str, list[torch.Tensor]], labels: dict[str, list[torch.Tensor]]
                        ) -> tuple[torch.Tensor, dict[str, float]]:
    total = torch.zeros(())
    acc = {}
    for name in ATTRIBUTES:
        for i, (out, lab) in enumerate(zip(logits[name], labels[name])):
            total = total + F.cross_entropy(out, lab)
            objects = lab > 0
            acc[f"{name}_{i}"] = float((out.argmax(1)[objects] == lab[objects]).float().mean()) if objects.any() \
                else float("nan")
    return total, acc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/synthref-tiny.yaml")
    parser.add_argument("--set", action="append", default=[], help="config override key=value (repeatable)")
    parser.add_argument("--data", type=Path, default=Path("data/synthref"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--max-steps", type=int, default=0, help="stop after this many steps (0 = no limit)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init", type=Path, default=None, help="continue from a backbone file this script wrote")
    parser.add_argument("--out", type=Path, required=True, help="backbone .safetensors to write")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    config = load_config(args.config, args.set)
    vcfg = config.model.visual
    if vcfg.kind != "resnet":
        raise SystemExit(f"--config: model.visual.kind is {vcfg.kind!r}; this script pre-trains ResNet backbones")
    vcfg.query_modulation, vcfg.checkpoint = False, None
    visual = VisualExtractor(vcfg, text_dim=8, image_size=config.model.image_size)
    if args.init is not None:
        from lgrnet.model.checkpoints import load_resnet_detr_checkpoint

        report = load_resnet_detr_checkpoint(visual, args.init)
        if report.missing or report.unexpected:
            raise SystemExit(f"--init {args.init}: {report.summary()}")
    backbone = visual.backbone
    strides = [int(r) for r in backbone.feature_info.reduction()]
    channels = [int(c) for c in backbone.feature_info.channels()]
    used = [i for i, s in enumerate(strides) if s >= 8]  # stride 8 and coarser: cells of a useful size
    heads = CellHeads([channels[i] for i in used])
    size = config.model.image_size
    train_set = SceneCells(args.data, "train", size, [strides[i] for i in used], train=True)
    val_set = SceneCells(args.data, "val", size, [strides[i] for i in used], train=False)
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
                        collate_fn=collate, drop_last=True, persistent_workers=args.workers > 0)
    params = list(backbone.parameters()) + list(heads.parameters())
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    start = time.monotonic()
    step, samples, log = 0, 0, []
    print(f"pre-training {vcfg.timm_name} ({sum(p.numel() for p in backbone.parameters()) / 1e6:.2f}M) at {size} "
          f"px on {len(train_set)} train scenes for {args.minutes} min; levels at strides "
          f"{[strides[i] for i in used]}", flush=True)
    done = False
    while not done:
        for images, labels in loader:
            # Short linear warm-up, then constant; the budget is minutes, not epochs.
            for group in optimizer.param_groups:
                group["lr"] = args.lr * min(1.0, (step + 1) / 50)
            features = backbone(images)
            loss, acc = losses_and_accuracy(heads([features[i] for i in used]), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            samples += len(images)
            if step % 25 == 0:
                minutes = (time.monotonic() - start) / 60
                log.append({"step": step, "samples": samples, "minutes": round(minutes, 2), "loss": float(loss),
                            **{k: round(v, 4) for k, v in acc.items()}})
                print(json.dumps(log[-1]), flush=True)
            if time.monotonic() - start >= args.minutes * 60 or step == args.max_steps:
                done = True
                break
    backbone.eval()
    heads.eval()
    val_loader = DataLoader(val_set, batch_size=64, num_workers=0, collate_fn=collate)
    sums: dict[str, list[float]] = {}
    with torch.inference_mode():
        for images, labels in val_loader:
            _, acc = losses_and_accuracy(heads([backbone(images)[i] for i in used]), labels)
            for k, v in acc.items():
                sums.setdefault(k, []).append(v)
    val = {k: round(float(np.nanmean(v)), 4) for k, v in sums.items()}
    print("val cell accuracy (object cells):", json.dumps(val), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    state = {f"backbone.0.body.{k}": v.detach().contiguous() for k, v in backbone.state_dict().items()}
    save_file(state, str(args.out))
    summary = {"init": str(args.init) if args.init else None, "config": args.config, "overrides": args.set, "timm_name": vcfg.timm_name,
               "timm_kwargs": vcfg.timm_kwargs, "out_indices": vcfg.out_indices, "image_size": size,
               "steps": step, "samples": samples, "minutes": round((time.monotonic() - start) / 60, 2),
               "lr": args.lr, "batch_size": args.batch_size, "seed": args.seed, "val_cell_accuracy": val, "log": log}
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {args.out} ({len(state)} tensors) and {args.out.with_suffix('.json')}", flush=True)


if __name__ == "__main__":
    main()
