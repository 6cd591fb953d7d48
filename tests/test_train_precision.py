"""Mixed precision and compilation paths of the engine on the CPU: bf16 training under autocast, fp16 training
with the gradient scaler (clipping must see unscaled gradients), ``lgrnet eval --precision bf16`` against fp32, and
``train.compile``. Tiny Swin twin at 64 px on the real samples of ../shared/data/real_smoke."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from model_helpers import one_intraop_thread
from test_engine import assert_first_moments_agree, smoke_rows, tiny, weights, write_smoke_splits
from tiny_configs import TINY_TEXT

from lgrnet.cli import main
from lgrnet.engine import checkpoint as ckpt
from lgrnet.engine.train import train


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The real samples as JSONL splits: train (30), four (4), val (7)."""
    rows = smoke_rows()
    return write_smoke_splits(tmp_path_factory.mktemp("precision"), {"train": rows, "four": rows[:4], "val": rows[::4][:7]})


pytestmark = pytest.mark.usefixtures("one_thread")


def _record_linear_dtypes(monkeypatch) -> list[tuple[bool, torch.dtype]]:
    """(training?, output dtype) of every nn.Linear call from now on."""
    seen: list[tuple[bool, torch.dtype]] = []
    original = torch.nn.Linear.forward

    def forward(self, x):
        out = original(self, x)
        seen.append((self.training, out.dtype))
        return out

    monkeypatch.setattr(torch.nn.Linear, "forward", forward)
    return seen


def test_bf16_training_on_cpu_runs_under_autocast(data_dir, tmp_path, monkeypatch):
    """train.precision=bf16: the training forward computes its Linear layers in bfloat16 (autocast on the CPU),
    the weights stay float32, the loss stays finite and no scaler is involved (bf16 needs none)."""
    seen = _record_linear_dtypes(monkeypatch)
    result = train(tiny(data_dir, "data.train_split=four", "train.batch_size=2", "train.max_steps=2",
                        "train.eval_every=0", "train.precision=bf16"), tmp_path / "run", device="cpu")
    assert result.step == 2
    training = {dtype for is_training, dtype in seen if is_training}
    assert training == {torch.bfloat16}
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in rows if r["kind"] == "train")
    assert {t.dtype for t in weights(tmp_path / "run").values()} == {torch.float32}
    assert ckpt.load_state(tmp_path / "run" / "checkpoints" / "last")["scaler"] == {}  # disabled scaler


def test_fp16_training_clips_unscaled_gradients(data_dir, tmp_path, monkeypatch):
    """train.precision=fp16 on the CPU runs with torch.amp.GradScaler("cpu"). With clip_max_norm far below the true
    gradient norm, the clipped gradient has global norm exactly clip_max_norm, so after one AdamW step the first
    moment (0.1 x gradient) has global norm 0.1 x clip_max_norm. Clipping the scaled gradients instead would leave
    that divided by the scale once the scaler unscales them.

    The scaler starts at 2**12 here instead of its default 2**16: at this twin's start the scaled gradients
    overflow fp16 down to 2**14 (measured), and the scaler would skip the first steps (its normal behaviour),
    leaving no optimizer step to check."""
    seen = _record_linear_dtypes(monkeypatch)
    real_scaler = torch.amp.GradScaler
    monkeypatch.setattr(torch.amp, "GradScaler", lambda *args, **kwargs: real_scaler(*args, init_scale=2.0**12,
                                                                                        **kwargs))
    clip = 1e-3
    result = train(tiny(data_dir, "data.train_split=four", "train.batch_size=2", "train.max_steps=1",
                        "train.eval_every=0", "train.precision=fp16", f"train.clip_max_norm={clip}"),
                   tmp_path / "run", device="cpu")
    assert result.step == 1
    assert {dtype for is_training, dtype in seen if is_training} == {torch.float16}
    state = ckpt.load_state(tmp_path / "run" / "checkpoints" / "last")
    assert state["scaler"]["scale"] == 2.0**12  # checkpointed; unchanged, so the step was not skipped
    per_param = state["optimizer"]["state"]
    assert len(per_param) > 100 and {int(s["step"]) for s in per_param.values()} == {1}
    moments = [s["exp_avg"] for s in per_param.values()]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(m) for m in moments])).item()
    assert norm == pytest.approx(0.1 * clip, rel=1e-3)


@pytest.fixture(scope="module")
def model_folder(data_dir, tmp_path_factory) -> Path:
    """A tiny 64 px model after one training step (random weights would predict nearly constant boxes)."""
    run = tmp_path_factory.mktemp("trained")
    with one_intraop_thread():  # module fixtures run before the function-scoped one_thread
        train(tiny(data_dir, "data.train_split=four", "train.batch_size=2", "train.max_steps=1",
                   "train.eval_every=0", "train.lr=1e-2"), run, device="cpu")
    return run / "checkpoints" / "last"


def test_eval_precision_bf16_matches_fp32_within_bf16_rounding(data_dir, model_folder, tmp_path, capsys):
    """``lgrnet eval --precision bf16`` on the CPU: the predictions really change (autocast ran) but stay within
    a few bfloat16 rounding steps of fp32: bf16 keeps 8 significant bits, so a box coordinate near 1 (in canvas
    units) moves in steps of 2**-8 ~ 0.004; allowed: 0.01, measured 0.0035. Every record once, in the same
    order."""
    results, predictions = {}, {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / f"{precision}.jsonl"
        assert main(["eval", "--checkpoint", str(model_folder), "--data", str(data_dir), "--split", "val",
                     "--output", str(out), "--device", "cpu", "--precision", precision]) == 0
        results[precision] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        predictions[precision] = [json.loads(line) for line in out.read_text().splitlines()]
    a, b = predictions["fp32"], predictions["bf16"]
    expected_ids = [json.loads(line)["id"] for line in (data_dir / "val.jsonl").read_text().splitlines()]
    assert [p["id"] for p in a] == [p["id"] for p in b] == expected_ids
    assert results["fp32"]["count"] == results["bf16"]["count"] == 7
    boxes_a = torch.tensor([p["box"] for p in a])
    boxes_b = torch.tensor([p["box"] for p in b])
    assert not torch.equal(boxes_a, boxes_b), "bf16 gave bit-identical boxes: autocast did not run"
    # Compare in canvas units: each box divided by its image's longer side (the letterbox scale to the canvas).
    sides = []
    for p in a:
        from PIL import Image

        with Image.open(p["image"]) as im:
            sides.append(max(im.size))
    canvas_diff = ((boxes_a - boxes_b).abs().max(dim=1).values / torch.tensor(sides, dtype=torch.float32))
    print(f"eval bf16 vs fp32: max box difference {canvas_diff.max().item():.4f} of the canvas, mIoU "
          f"{results['fp32']['miou']:.3f} vs {results['bf16']['miou']:.3f}")
    assert canvas_diff.max().item() < 0.01
    assert results["bf16"]["miou"] == pytest.approx(results["fp32"]["miou"], abs=1.0)  # points; measured 0.02


INDUCTOR_ENV = "LGRNET_TEST_INDUCTOR"


@pytest.mark.slow
@pytest.mark.parametrize("backend", [
    "aot_eager",
    pytest.param("inductor", marks=pytest.mark.skipif(
        not os.environ.get(INDUCTOR_ENV), reason=f"C++ kernel builds take minutes on a CPU; set {INDUCTOR_ENV}=1")),
])
def test_compiled_training_matches_eager(data_dir, tmp_path, backend):
    """train.compile=true wraps the model in torch.compile: the same loss and, after one step, the same gradients
    (AdamW's first moment, 0.1 x gradient) as the eager run, within float tolerance. (Weights alone could not
    show a wrong compiled model: each AdamW step moves a weight by about lr whatever the gradient's size.)

    "aot_eager" runs dynamo's graph capture and AOT autograd (graph breaks, unsupported ops, wrong gradients)
    without code generation (about 2 minutes on 2 busy CPU cores, most of it tracing). "inductor", the backend
    train.compile uses, also generates and builds C++ kernels: 8 minutes with a cold kernel cache on 2 busy
    cores, so it runs only when asked (measured: same loss, gradients within 4e-4 relative)."""
    # No dropout anywhere (the BERT encoder has its own): inductor draws its masks from its own generator.
    text = json.dumps(dict(TINY_TEXT["config_overrides"], hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    common = ["data.train_split=four", "train.batch_size=2", "train.max_steps=1", "train.eval_every=0",
              "model.dropout=0.0", f"model.text.config_overrides={text}"]
    compiled = []
    real_compile = torch.compile

    def compile_with_backend(model, *args, **kwargs):
        compiled.append(type(model).__name__)
        return real_compile(model, *args, **{**kwargs, "backend": backend})

    train(tiny(data_dir, *common), tmp_path / "eager", device="cpu")
    torch._dynamo.reset()
    from torch._dynamo.utils import counters

    counters.clear()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch, "compile", compile_with_backend)
        train(tiny(data_dir, *common, "train.compile=true"), tmp_path / "compiled", device="cpu")
    assert compiled == ["LGRNet"]
    assert counters["stats"]["unique_graphs"] >= 1  # dynamo really captured graphs

    def loss(run: Path) -> float:
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return next(r["loss"] for r in rows if r["kind"] == "train")

    assert loss(tmp_path / "compiled") == pytest.approx(loss(tmp_path / "eager"), rel=1e-5)
    relative = assert_first_moments_agree(tmp_path / "eager", tmp_path / "compiled", 5e-3)
    print(f"compiled ({backend}) vs eager: loss {loss(tmp_path / 'compiled')} vs {loss(tmp_path / 'eager')}, "
          f"worst relative gradient difference {max(relative.values()):.3g}")
