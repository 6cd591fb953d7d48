"""Export a trained SynthRef checkpoint as the package's shipped model (``src/lgrnet/weights/synthref-small/``,
the shipped name ``synthref``; a model with the generalized head goes to ``synthref-g-small/``, ``synthref-g``).

The folder is an ordinary model folder (``config.yaml`` + ``model.safetensors``, read by
:func:`lgrnet.model.io.load_model`) with three differences from a training checkpoint:

* the text encoder's weights are left out (the frozen offline MiniLM is loaded from its package at run time);
* floating-point tensors are stored in fp16 by default (``lgrnet-tiny`` without MiniLM is 4.7 M parameters:
  18.8 MB in fp32, 9.0 MB in fp16; the shipped ``lgrnet-small`` is 9.5 M, 18.2 MB in fp16, under the 20 MB limit;
  loading casts them back to the model's fp32);
* ``metrics.json`` records the run's val metrics and the metrics (the engine's names: ``acc50``, ``acc75``,
  ``miou``) of the *exported* weights on a fixed SynthRef val sample, which ``tests/test_quickstart.py`` checks
  the shipped model reproduces; ``--source`` describes where the weights come from (no machine paths are
  written);
* the data section names ``data/synthref`` (``lgrnet synth --out data/synthref --num-train 0`` writes the
  val/testA/testB sets the model is measured on; ``data/synthref-g`` and ``--grec`` for a model with the
  generalized head, whose recorded sample is SynthRef-G), not the training machine's folder.

``--set train.batch_size=16`` and the like change the config's data and training settings: the ones a user's
fine-tune starts from (the quickstart's, say) when the model's last stage ran elsewhere, such as on a GPU.

    python scripts/export_shipped_model.py --run runs/synthref-tiny --out src/lgrnet/weights/synthref-small \
        --source "GPU stage g4 of the SynthRef recipe (docs/synthref.md), best checkpoint"
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from lgrnet.config import apply_overrides
from lgrnet.engine.evaluate import RECORD_FILE, read_metrics, sample_accuracy
from lgrnet.model.io import CONFIG_FILE, TEXT_PREFIX, WEIGHTS_FILE, load_model
from lgrnet.model.registry import resolve_model

#: The data folder the shipped config names: where `lgrnet synth --out data/synthref --num-train 0` writes SynthRef's
#: val/testA/testB (seed 0, 1000 expressions each: the sets the shipped model is measured on).
SHIPPED_DATA_ROOT = "data/synthref"

#: The same for a model with the generalized head: `lgrnet synth --grec --out data/synthref-g --num-train 0`.
SHIPPED_GREC_DATA_ROOT = "data/synthref-g"

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def export(checkpoint: Path, out: Path, dtype: str, max_mb: float, sample_seed: int, sample_num: int,
           cache: Path, overrides: list[str] | None = None, source: str | None = None) -> dict:
    model, config = load_model(checkpoint)
    if config.data.format == "synth":
        config.data.root = SHIPPED_GREC_DATA_ROOT if config.model.grec.enabled else SHIPPED_DATA_ROOT
    if overrides:
        if any(o.split("=", 1)[0].strip().startswith("model.") for o in overrides):
            raise SystemExit("export: --set cannot change model.* (the weights define the model)")
        config = apply_overrides(config, overrides)
    if config.model.text.name != "minilm" or not config.model.text.freeze:
        print(f"warning: the text encoder is {config.model.text.name!r} (freeze={config.model.text.freeze}); "
              "the shipped model expects the frozen offline MiniLM", file=sys.stderr)
    # A pretrained encoder is reloaded from its package at run time; a randomly initialised one (tests' tiny
    # twins) only exists in the file, so it stays there.
    text = config.model.text
    strip_text = bool(text.pretrained and text.name)
    config.model.text.save_weights = not strip_text
    config.train.init_from = None
    config.model.visual.checkpoint = None  # the pre-trained backbone it started from is in the weights now
    config.train.time_limit_minutes, config.train.max_steps = 0.0, 0
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()
             if not (strip_text and k.startswith(TEXT_PREFIX))}
    target = DTYPES[dtype]
    state = {k: (v.to(target) if v.is_floating_point() else v).contiguous().clone() for k, v in state.items()}

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": "pt", "lgrnet_config": CONFIG_FILE,
                                                            "dtype": dtype})
        (tmp / CONFIG_FILE).write_text(config.to_yaml())
        size_mb = (tmp / WEIGHTS_FILE).stat().st_size / 2**20
        if size_mb > max_mb:
            raise SystemExit(f"export: {WEIGHTS_FILE} is {size_mb:.1f} MB, over the {max_mb:g} MB limit")
        # Record what the exported (rounded) weights score, not what the fp32 checkpoint scored.
        exported, exported_config = load_model(tmp)
        sample = sample_accuracy(exported, exported_config, cache, sample_seed, sample_num, "val")
        state_file = checkpoint / "training_state.pt"
        run_val = {}
        if state_file.is_file():
            run_val = torch.load(state_file, weights_only=True, map_location="cpu").get("val_metrics", {})
        elif (checkpoint / RECORD_FILE).is_file():  # re-exporting an exported folder keeps its run's record
            previous = json.loads((checkpoint / RECORD_FILE).read_text())
            run_val = read_metrics(previous.get("run_val", {}))
            source = source or previous.get("source")
        record = {"sample": {"seed": sample_seed, "split": "val", "num": sample_num, **sample},
                  "run_val": run_val, "source": source or "", "dtype": dtype,
                  "size_mb": round(size_mb, 2), "exported": time.strftime("%Y-%m-%d %H:%M:%S")}
        (tmp / RECORD_FILE).write_text(json.dumps(record, indent=2) + "\n")
        shutil.rmtree(out, ignore_errors=True)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, help="training output folder (its checkpoints/best, else last)")
    source.add_argument("--checkpoint", type=Path, help="a model folder")
    parser.add_argument("--out", type=Path, default=Path("src/lgrnet/weights/synthref-small"))
    parser.add_argument("--source", default=None,
                        help="where the weights come from, recorded in metrics.json (words, not a machine path)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp16")
    parser.add_argument("--max-mb", type=float, default=20.0)
    parser.add_argument("--sample-seed", type=int, default=1234, help="SynthRef seed of the recorded val sample")
    parser.add_argument("--sample-num", type=int, default=200, help="expressions in the recorded val sample")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "lgrnet-export-sample")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="change a data/train setting of the written config.yaml")
    args = parser.parse_args()
    checkpoint = resolve_model(args.run if args.run else args.checkpoint, "--run" if args.run else "--checkpoint",
                               hub=False)
    record = export(checkpoint, args.out, args.dtype, args.max_mb, args.sample_seed, args.sample_num, args.cache,
                    args.overrides, args.source)
    print(f"exported {checkpoint} -> {args.out} ({record['size_mb']} MB, {args.dtype}); val sample "
          f"(seed {args.sample_seed}, {args.sample_num}) Acc@0.5 {record['sample']['acc50']:.2f}")


if __name__ == "__main__":
    main()
