"""Start a model of another size from a trained one, as a model folder for ``train.init_from``.

Every tensor whose name and shape match the trained model's is copied (a wider model keeps the trained backbone,
neck and query-dynamic attention when ``neck_channels`` is unchanged). With ``--repeat-layers`` a deeper model's
extra reasoning layers start as copies of the trained ones in order (layers 0, 1, 2, 0, 1, 2 for 3 -> 6; the
progressive stacking of Gong et al., ICML 2019). A model with the generalized head (``model.grec.enabled``) started
from a classic one takes the classic prediction token's row of the visual position table for each of its K tokens
(its identities, ``grec.queries``, start as fresh N(0, 1) rows scaled by ``--query-scale``, so every token first
behaves like the trained one and the identities tell them apart). Everything else keeps its fresh initialisation.
The text encoder comes from its pretrained source, as in any run.

    python scripts/transfer_weights.py --source src/lgrnet/weights/synthref-small --config configs/synthref-tiny.yaml \
        --set model.num_layers=6 --repeat-layers --out runs/init-6-layers
    python scripts/transfer_weights.py --source src/lgrnet/weights/synthref-small --config configs/synthref-g.yaml \
        --out runs/init-grec
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from lgrnet.config import ConfigError, load_config
from lgrnet.errors import LGRNetError
from lgrnet.model.io import TEXT_PREFIX, WEIGHTS_FILE, save_model

LAYER_KEY = re.compile(r"^reasoning\.layers\.(\d+)\.(.+)$")
POSITION_TABLE = "visual_pos.weight"  # rows 0..P-1: prediction token(s), then the visual tokens


def transfer(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor], repeat_layers: bool,
             num_tokens: int = 1) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """New values for ``target``'s tensors and the keys by outcome: copied, repeated (from which layer), fresh.

    ``num_tokens``: the target's prediction tokens (K of a generalized head); a source table with one prediction row
    gives that row to each of them."""
    source = dict(source)
    table = source.get(POSITION_TABLE)
    if (table is not None and POSITION_TABLE in target and num_tokens > 1
            and target[POSITION_TABLE].shape[0] == table.shape[0] - 1 + num_tokens):
        source[POSITION_TABLE] = torch.cat((table[:1].expand(num_tokens, -1), table[1:]))
    source_layers = {int(m.group(1)) for k in source if (m := LAYER_KEY.match(k))}
    depth = max(source_layers) + 1 if source_layers else 0
    values: dict[str, torch.Tensor] = {}
    report: dict[str, list[str]] = {"copied": [], "repeated": [], "fresh": []}
    for key, tensor in target.items():
        if key.startswith(TEXT_PREFIX):
            continue  # the pretrained encoder is loaded from its source
        origin = key
        match = LAYER_KEY.match(key)
        if key not in source and repeat_layers and match and depth:
            origin = f"reasoning.layers.{int(match.group(1)) % depth}.{match.group(2)}"
        if origin in source and source[origin].shape == tensor.shape:
            values[key] = source[origin].to(tensor.dtype)
            report["copied" if origin == key else "repeated"].append(key)
        else:
            report["fresh"].append(key)
    return values, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", type=Path, required=True, help="trained model folder (model.safetensors)")
    parser.add_argument("--config", required=True, help="config (file or preset) of the new model")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--repeat-layers", action="store_true", help="extra reasoning layers copy trained ones")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fresh initialisation")
    parser.add_argument("--query-scale", type=float, default=0.5,
                        help="generalized head: scale of the fresh N(0, 1) token identities (default 0.5)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    weights = args.source / WEIGHTS_FILE
    if not weights.is_file():
        print(f"transfer_weights: --source {args.source}: no {WEIGHTS_FILE}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config, args.overrides)
    except (ConfigError, OSError) as exc:
        print(f"transfer_weights: --config {args.config}: {exc}", file=sys.stderr)
        return 2
    from lgrnet.model.builder import build_model

    torch.manual_seed(args.seed)
    try:
        model = build_model(config.model, config.loss)
    except LGRNetError as exc:
        print(f"transfer_weights: {exc}", file=sys.stderr)
        return 2
    grec = config.model.grec
    values, report = transfer(load_file(str(weights)), model.state_dict(), args.repeat_layers,
                              grec.num_queries if grec.enabled else config.model.num_pred_tokens)
    model.load_state_dict(values, strict=False)
    if model.grec is not None:
        with torch.no_grad():
            model.grec.queries.weight.mul_(args.query_scale)
    config.train.init_from = None
    save_model(model, config, args.out)
    print(f"transfer_weights: {args.out}: {len(report['copied'])} tensors copied, {len(report['repeated'])} "
          f"repeated from trained layers, {len(report['fresh'])} fresh" +
          (f" (e.g. {', '.join(report['fresh'][:3])})" if report["fresh"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
