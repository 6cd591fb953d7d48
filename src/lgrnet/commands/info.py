"""``lgrnet info``: the model's per-part parameter table, built with random weights (no downloads)."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("info", help="print the model's parameter table (random weights, no downloads)",
                                   description=__doc__)
    parser.add_argument("--preset", default="lgrnet-swin-s", help="preset name (default: lgrnet-swin-s)")
    parser.add_argument("--config", default=None, help="YAML config file (overrides --preset)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, e.g. --set model.num_layers=3 (repeatable)")
    parser.set_defaults(func=run)


def build_random_model(config):
    """The model of `config` with random weights on the meta device: architecture only, no files, no network."""
    import copy

    import torch

    from lgrnet.model.lgrnet import LGRNet

    config = copy.deepcopy(config)
    # The encoder's architecture without asking the hub (the constructor reads no weights).
    config.model.text.pretrained = False
    with torch.device("meta"):
        return LGRNet(config.model, config.loss)


def format_table(rows: list[tuple[str, int, int]], title: str) -> str:
    width = max(len(r[0]) for r in rows + [("total", 0, 0)])
    lines = [title, f"{'part':<{width}}  {'parameters':>13}  {'trainable':>13}", "-" * (width + 30)]
    lines += [f"{name:<{width}}  {n:>13,}  {t:>13,}" for name, n, t in rows]
    lines.append("-" * (width + 30))
    lines.append(f"{'total':<{width}}  {sum(r[1] for r in rows):>13,}  {sum(r[2] for r in rows):>13,}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from lgrnet.config import load_config

    config = load_config(args.config or args.preset, args.overrides)  # a bad config fails before torch loads
    from lgrnet.model.lgrnet import parameter_summary

    model = build_random_model(config)
    m = config.model
    title = (f"{config.name}: text {m.text.name or 'BertConfig'} ({model.text.hidden_size}-d), visual "
             f"{m.visual.timm_name}, image {m.image_size}, D={m.hidden_dim}, {m.num_layers} layers, "
             f"{sum(h * w for h, w in model.token_shapes)} visual tokens")
    print(format_table(parameter_summary(model), title))
    return 0
