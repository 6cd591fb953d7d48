"""Two gloo processes under torchrun in one short launch: gradient accumulation through DDP's ``no_sync`` equals one
process with the whole global batch, and the predictions gathered from both ranks come back in dataset order,
each record once. Tiny Swin twin at 64 px on the real samples of ../shared/data/real_smoke."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from test_engine import REPO, _env, assert_first_moments_agree, smoke_rows, tiny, write_smoke_splits
from tiny_configs import TINY_TEXT

from lgrnet.engine.distributed import cleanup_distributed
from lgrnet.engine.evaluate import evaluate
from lgrnet.engine.train import Trainer

# Trains (the Trainer, so that the process group outlives the run), then evaluates the val split with the
# predictions gathered on rank 0, in the same process group.
WORKER = """
import json, sys
import pytest
import torch
torch.set_num_threads(1)
from lgrnet.config import load_config
from lgrnet.engine.distributed import cleanup_distributed
from lgrnet.engine.evaluate import evaluate
from lgrnet.engine.train import Trainer

config_path, output_dir, predictions_path = sys.argv[1:4]
trainer = Trainer(load_config(config_path), output_dir, device="cpu")
trainer.run()
metrics, predictions = evaluate(trainer.model, trainer.val_loader, trainer.info, collect_predictions=True)
if trainer.info.is_main:
    with open(predictions_path, "w") as f:
        json.dump({"metrics": metrics, "predictions": predictions}, f)
cleanup_distributed(synchronize=True)
"""


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_ddp_accumulation_and_gathered_predictions_match_one_process(tmp_path):
    """2 ranks x batch 2 x 2 accumulation steps (the first micro-batch under ``no_sync``, the second all-reduces
    the sum) == 1 process x batch 8, after one optimizer step: AdamW's first moment (0.1 x gradient; the weights
    alone would hide a gradient of the wrong size, see test_train_state) within round-off. Exactness needs a
    per-sample mean loss: LayerNorm only, no dropout, no alignment loss (its in-batch negatives couple the samples
    of a micro-batch). Then the 7 val records, split 4 + 3 over the ranks, come back on rank 0 in file order, each
    once, with the same boxes as one process computes."""
    rows = smoke_rows()
    write_smoke_splits(tmp_path, {"train": rows[:8], "val": rows[::4][:7]})
    text = json.dumps(dict(TINY_TEXT["config_overrides"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    common = ["train.max_steps=1", "train.epochs=1", "train.eval_every=1000", "model.dropout=0.0", "loss.align=false",
              f"model.text.config_overrides={text}", "train.lr=1e-3"]
    cfg = tmp_path / "ddp.yaml"
    cfg.write_text(tiny(tmp_path, "train.batch_size=2", "train.accumulation_steps=2", *common).to_yaml())
    worker = tmp_path / "worker.py"
    worker.write_text(WORKER)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
         str(cfg), str(tmp_path / "ddp"), str(tmp_path / "ddp.json")],
        env=_env(), capture_output=True, text=True, cwd=REPO, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    single = Trainer(tiny(tmp_path, "train.batch_size=8", *common), tmp_path / "single", device="cpu")
    try:
        single.run()
        _, single_predictions = evaluate(single.model, single.val_loader, single.info, collect_predictions=True)
    finally:
        cleanup_distributed()
    assert single.step == 1

    assert_first_moments_agree(tmp_path / "single", tmp_path / "ddp", 1e-3)

    gathered = json.loads((tmp_path / "ddp.json").read_text())
    predictions = gathered["predictions"]
    expected_ids = [json.loads(line)["id"] for line in (tmp_path / "val.jsonl").read_text().splitlines()]
    assert [p["id"] for p in predictions] == expected_ids  # interleaved back from ranks 0 (4) and 1 (3)
    assert [p["id"] for p in single_predictions] == expected_ids
    assert gathered["metrics"]["count"] == 7
    for got, want in zip(predictions, single_predictions):
        assert got["expression"] == want["expression"] and got["gt_box"] == want["gt_box"]
        # One AdamW step of up to lr (1e-3) per weight apart at most: boxes agree to a fraction of a pixel.
        assert torch.allclose(torch.tensor(got["box"]), torch.tensor(want["box"]), atol=1.0), (got, want)
