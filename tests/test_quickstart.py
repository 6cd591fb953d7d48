"""``lgrnet quickstart`` end to end on a tiny twin with tiny budgets: the no-shipped-model path (said plainly, then
from scratch), the outputs (model folder loadable by eval/predict, metrics.json, predictions.png), the shipped-weights
path, argument errors, and the shipped model's recorded accuracy (only when the package holds the weights)."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from script_helpers import load_script
from tiny_configs import tiny_twin

from lgrnet.cli import main
from lgrnet.config import load_config
from lgrnet.engine.evaluate import check_recorded
from lgrnet.model.registry import SHIPPED_GREC_MODEL_ENV, SHIPPED_MODEL_ENV, shipped_model_folder
from lgrnet.quickstart import EVAL_SPLITS, SHIPPED_MODEL_DIR, has_model

NUM_EVAL = 4
GREC_NUM = 8  # SynthRef-G val expressions of the generalized-REC part (seed 0: 4 single, 2 multi, 2 no-target)


def _quickstart(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["quickstart", *args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("quickstart")
    twin = root / "twin.yaml"
    twin.write_text(tiny_twin("lgrnet-tiny").to_yaml())
    return {"root": root, "twin": twin, "cache": root / "cache"}


def _tiny_args(work: dict[str, Path], out: Path) -> list[str]:
    return ["--output-dir", str(out), "--cache-dir", str(work["cache"]), "--config", str(work["twin"]),
            "--num-eval", str(NUM_EVAL), "--num-train", "8", "--batch-size", "4", "--max-steps", "2",
            "--train-minutes", "5", "--examples", "4", "--device", "cpu", "--set", "data.num_workers=0",
            "--grec-num-eval", "0"]


@pytest.fixture(scope="module")
def scratch(work) -> dict:
    """A quickstart run where the package holds no shipped model (the shipped-model folders are empty)."""
    empty = work["root"] / "no-weights"
    empty.mkdir()
    out = work["root"] / "scratch"
    args = _tiny_args(work, out)
    args[args.index("--grec-num-eval") + 1] = str(GREC_NUM)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SHIPPED_MODEL_ENV, str(empty))
        mp.setenv(SHIPPED_GREC_MODEL_ENV, str(empty))
        code, stdout, stderr = _quickstart(args)
    assert code == 0, stderr
    return {"out": out, "stdout": stdout, "metrics": json.loads((out / "metrics.json").read_text())}


def test_without_shipped_model_says_so_and_trains_from_scratch(scratch):
    assert "No shipped SynthRef model in this build" in scratch["stdout"]
    assert "--from-scratch path" in scratch["stdout"]
    m = scratch["metrics"]
    assert m["start"] == "from-scratch"
    assert m["train"]["steps"] == 2 and m["train"]["samples_seen"] == 8
    # The before/after table is printed.
    assert "Acc@0.5 before" in scratch["stdout"] and all(s in scratch["stdout"] for s in EVAL_SPLITS)


def test_outputs_have_the_documented_shape(scratch):
    out, m = scratch["out"], scratch["metrics"]
    for key in (*EVAL_SPLITS, "minutes", "before"):
        assert key in m
    # From scratch, "before" is the untrained model on val only (chance level on every split).
    assert set(m["before"]) == {"val"}
    for metrics in (m["val"], m["testA"], m["testB"], m["before"]["val"]):
        assert metrics["count"] == NUM_EVAL
        # Accuracies are shares of NUM_EVAL samples, and a box with IoU >= 0.75 also has IoU >= 0.5.
        hits = metrics["acc50"] * NUM_EVAL / 100
        assert abs(hits - round(hits)) < 1e-3 and metrics["acc75"] <= metrics["acc50"]
    assert m["train"]["loss_before"] > 0 and m["train"]["loss_after"] > 0
    assert m["minutes"] == 5.0
    assert has_model(out / "model") and not (out / "model" / "training_state.pt").exists()
    assert not (out / "train" / "init").exists()  # the hand-off folder is cleaned up
    png = Image.open(out / "predictions.png")
    assert png.format == "PNG" and png.width >= 640
    pixels = np.asarray(png.convert("RGB")).astype(int)
    r, g, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    # Predicted boxes are drawn in red (230, 40, 40), ground truth in green (40, 200, 70); tiles are downscaled.
    assert ((r > 180) & (g < 90) & (b < 90)).sum() > 50
    assert ((g > 160) & (r < 100) & (b < 120)).sum() > 20


def test_model_folder_loads_in_eval_and_predict(scratch):
    from lgrnet.engine.evaluate import evaluate_checkpoint
    from lgrnet.inference.predictor import Predictor

    folder = scratch["out"] / "model"
    # `lgrnet eval --checkpoint DIR/model` uses the folder's own data config: the cached SynthRef set.
    result = evaluate_checkpoint(str(folder), split="testA", device="cpu")
    assert result["count"] == NUM_EVAL
    assert round(result["acc50"], 2) == scratch["metrics"]["testA"]["acc50"]
    assert round(result["miou"], 2) == scratch["metrics"]["testA"]["miou"]
    predictor = Predictor.from_pretrained(folder, device="cpu")
    image = next((Path(scratch["metrics"]["data"]["root"]) / "images" / "val").iterdir())
    p = predictor.predict(str(image), "the red circle")
    w, h = Image.open(image).size
    x1, y1, x2, y2 = p.box_xyxy
    assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h


def test_shipped_weights_are_loaded_and_fine_tuned(work, scratch):
    weights = work["root"] / "shipped"
    shutil.copytree(scratch["out"] / "model", weights)
    out = work["root"] / "shipped-run"
    args = _tiny_args(work, out)
    args[args.index("--max-steps") + 1] = "1"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SHIPPED_MODEL_ENV, str(weights))
        code, stdout, stderr = _quickstart(args)
    assert code == 0, stderr
    assert "No shipped" not in stdout and f"Loaded the shipped SynthRef model from {weights}" in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["start"] == "shipped" and m["train"]["steps"] == 1
    # "before" is the shipped model itself: the same numbers the run that produced it reported at its end.
    for split in EVAL_SPLITS:
        assert m["before"][split] == scratch["metrics"][split]
    assert has_model(out / "model")
    # The loss before -> after is the mean over the same fixed train expressions (all 8 here), for each model.
    from lgrnet.model.io import load_model
    from lgrnet.quickstart import fixed_set_loss

    start_model, _ = load_model(weights)
    final_model, final_config = load_model(out / "model")
    assert m["train"]["loss_samples"] == 8
    assert m["train"]["loss_before"] == pytest.approx(fixed_set_loss(start_model, final_config, "cpu")[0], rel=1e-5)
    assert m["train"]["loss_after"] == pytest.approx(fixed_set_loss(final_model, final_config, "cpu")[0], rel=1e-5)
    assert f"mean loss on 8 fixed train expressions {m['train']['loss_before']:.3f} -> " in stdout


def test_zero_minutes_evaluates_the_start_model_only(work, scratch):
    """--train-minutes 0 with a model folder whose config names data that is not on this machine (as the shipped
    model's did): evaluated on the cached SynthRef set and written with that data, no training."""
    from lgrnet.config import load_config

    weights = work["root"] / "shipped-elsewhere"
    shutil.copytree(scratch["out"] / "model", weights)
    config = load_config(weights / "config.yaml", ["data.root=data/synthref-60k"])
    (weights / "config.yaml").write_text(config.to_yaml())
    out = work["root"] / "zero"
    args = _tiny_args(work, out)
    args[args.index("--max-steps") + 1] = "0"
    args[args.index("--train-minutes") + 1] = "0"
    code, stdout, stderr = _quickstart([*args, "--checkpoint", str(weights)])
    assert code == 0, stderr
    assert "no training" in stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["train"]["steps"] == 0 and m["train"]["loss_before"] is None
    for split in EVAL_SPLITS:  # the same weights on the same data: before, after and the run that made them
        assert m["before"][split] == m[split] == scratch["metrics"][split]
    assert load_config(out / "model" / "config.yaml").data.root == m["data"]["root"]
    assert not (out / "train").exists() and not list(out.glob(".quickstart-*"))


def test_a_failed_run_leaves_the_output_folder_as_it_was(work, scratch):
    broken = work["root"] / "broken"
    shutil.copytree(scratch["out"] / "model", broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    fresh = work["root"] / "fresh-out"
    code, _, err = _quickstart([*_tiny_args(work, fresh), "--checkpoint", str(broken)])
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "not a readable safetensors file" in lines[0] and "Traceback" not in err
    assert not fresh.exists()
    previous = work["root"] / "previous-out"
    shutil.copytree(scratch["out"], previous)
    before = sorted(str(p.relative_to(previous)) for p in previous.rglob("*"))
    metrics = (previous / "metrics.json").read_text()
    code, _, err = _quickstart([*_tiny_args(work, previous), "--checkpoint", str(broken)])
    assert code == 2
    assert sorted(str(p.relative_to(previous)) for p in previous.rglob("*")) == before
    assert (previous / "metrics.json").read_text() == metrics
    code, _, err = _quickstart([*_tiny_args(work, previous / "metrics.json" / "x")])
    assert code == 2 and "metrics.json, which is a file" in err


def test_metrics_use_the_engines_names_and_old_records_still_read(work, scratch, tmp_path):
    from lgrnet.engine.evaluate import read_metrics

    assert set(scratch["metrics"]["val"]) == {"acc50", "acc75", "miou", "orig_acc50", "count"}
    assert read_metrics({"acc@0.5": 1.0, "acc@0.75": 2.0, "acc@0.5_original": 3.0, "miou": 4.0}) == \
        {"acc50": 1.0, "acc75": 2.0, "orig_acc50": 3.0, "miou": 4.0}
    folder = tmp_path / "old"
    shutil.copytree(scratch["out"] / "model", folder)
    (folder / "metrics.json").write_text(json.dumps({"sample": {"seed": 0, "split": "val", "num": NUM_EVAL,
                                                                "acc@0.5": 12.5}}))
    measured, recorded, num = check_recorded(folder, work["cache"])
    assert (recorded, num) == (12.5, NUM_EVAL) and measured == scratch["metrics"]["val"]["acc50"]


def test_bad_arguments_are_one_line_errors(work):
    out = work["root"] / "bad"
    code, _, err = _quickstart([*_tiny_args(work, out), "--checkpoint", str(work["root"] / "nowhere")])
    assert code == 2 and "--checkpoint" in err and "nowhere: no such folder" in err
    code, _, err = _quickstart([*_tiny_args(work, out), "--weights", "synthref-large"])  # the old option name
    assert code == 2 and "--checkpoint synthref-large" in err and "shipped models: synthref, synthref-small" in err
    assert not out.exists()  # nothing left behind
    code, _, err = _quickstart([*_tiny_args(work, out), "--num-eval", "0"])
    assert code == 2 and "--num-eval 0" in err
    code, _, err = _quickstart([*_tiny_args(work, out), "--threads", "0"])
    assert code == 2 and "--threads 0" in err
    code, _, err = _quickstart([*_tiny_args(work, out), "--from-scratch", "--minutes", "0", "--max-steps", "0"])
    assert code == 2 and "training budget" in err


def test_without_the_shipped_grec_model_the_generalized_part_is_skipped_plainly(scratch):
    assert "No shipped SynthRef-G model in this build" in scratch["stdout"]
    assert "generalized-REC part (zero, one or many boxes per expression) is skipped" in scratch["stdout"]
    assert scratch["metrics"]["grec"] is None and "No shipped SynthRef-G" in scratch["metrics"]["grec_note"]
    assert not (scratch["out"] / "grec_predictions.png").exists() and "SynthRef-G val" not in scratch["stdout"]


def _grec_model(folder: Path, threshold: float) -> Path:
    """A tiny random model with the generalized head (3 tokens) whose score threshold is ``threshold``."""
    from inference_helpers import make_tiny_checkpoint

    return make_tiny_checkpoint(folder, "lgrnet-tiny", overrides=[
        "model.grec.enabled=true", "model.grec.num_queries=3", f"model.grec.threshold={threshold}"])


def _val_lines(root: Path) -> dict[str, dict]:
    return {line["id"]: line for line in map(json.loads, (root / "val.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def grec_run(work, scratch) -> dict:
    """The quickstart with a shipped SynthRef-G model (a tiny one whose threshold 1.0 no score reaches: it finds
    nothing), evaluating the scratch run's model without training."""
    folder = _grec_model(work["root"] / "g-model", 1.0)
    out = work["root"] / "grec-run"
    args = _tiny_args(work, out)
    for option, value in (("--max-steps", "0"), ("--train-minutes", "0"), ("--grec-num-eval", str(GREC_NUM)),
                          ("--examples", "6")):
        args[args.index(option) + 1] = value
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(SHIPPED_GREC_MODEL_ENV, str(folder))
        code, stdout, stderr = _quickstart([*args, "--checkpoint", str(scratch["out"] / "model")])
    assert code == 0, stderr
    return {"out": out, "stdout": stdout, "metrics": json.loads((out / "metrics.json").read_text()),
            "folder": folder}


def test_the_shipped_grec_model_is_evaluated_on_synthref_g(grec_run):
    g = grec_run["metrics"]["grec"]
    lines = _val_lines(Path(g["data"]["root"]))
    kinds = [line["kind"] for line in lines.values()]
    assert (g["count"], g["single_count"], g["multi_count"], g["none_count"]) == \
        (GREC_NUM, kinds.count("single"), kinds.count("multi"), kinds.count("none"))
    assert kinds.count("none") >= 1 and kinds.count("multi") >= 1
    # Nothing reaches the threshold: every no-target expression is right, no target expression is, and
    # Precision@(F1=1) is the share of no-target expressions among all.
    assert g["threshold"] == 1.0 and g["model"] == str(grec_run["folder"])
    assert (g["n_acc"], g["t_acc"]) == (100.0, 0.0)
    assert g["precision"] == round(100 * kinds.count("none") / GREC_NUM, 2)
    assert "seconds" in grec_run["metrics"] and grec_run["metrics"]["seconds"]["grec"] > 0
    stdout = grec_run["stdout"]
    assert "Evaluating the generalized model" in stdout and "SynthRef-G val" in stdout and "Prec@(F1=1)" in stdout
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("SynthRef-G val") and "Prec@(F1=1)" in line)
    row = lines[header + 1].split()
    assert row[1:4] == [str(GREC_NUM), f"{kinds.count('single')}/{kinds.count('multi')}/{kinds.count('none')}",
                        f"{g['precision']:.1f}%"]
    assert str(grec_run["out"] / "grec_predictions.png") in stdout


def test_grec_grid_shows_a_no_target_a_multi_target_and_a_single_target_example(grec_run):
    g = grec_run["metrics"]["grec"]
    lines = _val_lines(Path(g["data"]["root"]))
    examples = g["examples"]  # --examples 6: three tiles, one per kind
    assert [e["kind"] for e in examples] == ["none", "multi", "single"]
    for example in examples:
        line = lines[example["id"]]
        assert line["kind"] == example["kind"] and line["expression"] == example["expression"]
        assert example["targets"] == len(line["boxes"]) and example["boxes"] == 0 and example["scores"] == []
    png = Image.open(grec_run["out"] / "grec_predictions.png")
    assert png.format == "PNG" and png.width >= 640
    pixels = np.asarray(png.convert("RGB")).astype(int)
    r, g_, b = pixels[..., 0], pixels[..., 1], pixels[..., 2]
    assert ((g_ > 160) & (r < 100) & (b < 120)).sum() > 20  # the target sets' green dashed boxes


def test_grec_figures_with_every_token_found(work, scratch, tmp_path):
    """Threshold 0: every token is a prediction, so no no-target expression is right and every target expression
    has one; each tile shows all 3 boxes, scores highest first."""
    from lgrnet.quickstart import QuickstartOptions, evaluate_grec, prepare_grec_data

    options = QuickstartOptions(output_dir=tmp_path, cache_dir=work["cache"], num_grec=GREC_NUM, num_examples=8,
                                device="cpu")
    said: list[str] = []
    root = prepare_grec_data(options, said.append)
    assert "reused from" in said[0]  # generated by the quickstart run
    g = evaluate_grec(_grec_model(tmp_path / "g0", 0.0), root, options, tmp_path)
    assert (g["n_acc"], g["t_acc"], g["threshold"]) == (0.0, 100.0, 0.0)
    assert [e["kind"] for e in g["examples"]] == ["none", "multi", "single", "multi"]  # 8 // 2 tiles
    assert len({e["id"] for e in g["examples"]}) == 4
    for example in g["examples"]:
        assert example["boxes"] == 3 and example["scores"] == sorted(example["scores"], reverse=True)
    assert (tmp_path / "grec_predictions.png").is_file()


def test_grec_arguments_fail_before_any_work(work, scratch):
    out = work["root"] / "bad-grec"
    args = _tiny_args(work, out)
    args[args.index("--grec-num-eval") + 1] = str(GREC_NUM)
    code, _, err = _quickstart([*args, "--grec-checkpoint", str(work["root"] / "nowhere")])
    assert code == 2 and "--grec-checkpoint" in err and "nowhere: no such folder" in err
    code, _, err = _quickstart([*args, "--grec-checkpoint", str(scratch["out"] / "model")])  # a classic model
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "has no generalized head" in lines[0]
    code, _, err = _quickstart([*_tiny_args(work, out), "--grec-num-eval", "-1"])
    assert code == 2 and "--grec-num-eval -1" in err
    assert not out.exists()


@pytest.mark.parametrize("name", ["synthref-small", "synthref-tiny"])
def test_shipped_model_reproduces_recorded_val_accuracy(name, tmp_path):
    folder = shipped_model_folder(name)
    if not has_model(folder):
        pytest.skip("no shipped model in this build")
    measured, recorded, num = check_recorded(folder, tmp_path)
    # CPU kernels may differ across machines: at most one sample of the fixed val sample may flip.
    assert abs(measured - recorded) <= 100.0 / num + 1e-6


def test_learning_curve_from_metrics_log(tmp_path):
    lc = load_script("learning_curve")
    (tmp_path / "config.yaml").write_text("train:\n  batch_size: 32\n  accumulation_steps: 2\n")
    t = 1000.0
    lines = [{"kind": "train", "step": 10, "time": t + 60, "loss": 3.0},
             {"kind": "train", "step": 20, "time": t + 120, "loss": 2.0},
             {"kind": "val", "step": 20, "time": t + 150, "epoch": 1, "acc50": 12.5, "acc75": 3.0, "miou": 20.0},
             # the run was stopped for a day and resumed: the gap does not count
             {"kind": "train", "step": 30, "time": t + 86400, "loss": 1.5},
             {"kind": "val", "step": 30, "time": t + 86430, "epoch": 2, "acc50": 40.0, "acc75": 9.0, "miou": 35.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows = lc.curve(tmp_path)
    assert [r["samples"] for r in rows] == [20 * 64, 30 * 64]
    assert rows[0]["minutes"] == pytest.approx(150 / 60)  # 60 s before the first log (10 steps at 6 s) + 90 s
    assert rows[1]["minutes"] == pytest.approx(180 / 60)  # + 30 s after the resume
    assert rows[0]["loss"] == 2.0 and rows[1]["acc50"] == 40.0
    assert "| 1 | 2 | 30 | 1920 |" in lc.markdown(rows)
    lc.plot(rows, tmp_path / "curve.png", "test")
    assert Image.open(tmp_path / "curve.png").size == (1040, 370)


def test_learning_curve_stitches_runs_that_continue_one_another(tmp_path):
    lc = load_script("learning_curve")
    first, second = tmp_path / "first", tmp_path / "second"
    for run, acc in ((first, (10.0, 30.0, 31.0)), (second, (25.0, 50.0, 0.0))):
        run.mkdir()
        (run / "config.yaml").write_text("train:\n  batch_size: 4\n")
        events = []
        for k, value in enumerate(acc[:2] if run == second else acc, 1):
            events += [{"kind": "train", "step": 10 * k, "time": 60.0 * k, "loss": 1.0},
                       {"kind": "val", "step": 10 * k, "time": 60.0 * k, "epoch": 1, "acc50": value,
                        "acc75": 0.0, "miou": 0.0}]
        (run / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in events))
    # the second run started from the first one's step-20 checkpoint: its step 30 is left out
    rows = lc.stitched_curve([f"{first}:20", str(second)])
    assert [r["acc50"] for r in rows] == [10.0, 30.0, 25.0, 50.0]
    assert [r["stage"] for r in rows] == [1, 1, 2, 2]
    assert [r["global_step"] for r in rows] == [10, 20, 30, 40]
    assert [r["samples"] for r in rows] == [40, 80, 120, 160]
    assert [r["minutes"] for r in rows] == pytest.approx([1.0, 2.0, 3.0, 4.0])
    lc.plot(rows, tmp_path / "curve.png", "stitched")
    with pytest.raises(SystemExit, match="RUN:STEP"):
        lc.stitched_curve([str(first), str(second)])
    with pytest.raises(SystemExit, match="no validation at step 15"):
        lc.stitched_curve([f"{first}:15", str(second)])


@pytest.mark.parametrize("name, preset", [("synthref-tiny", "lgrnet-tiny"), ("synthref-small", "lgrnet-small")])
def test_synthref_configs_are_their_presets_on_synthref(name, preset):
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert config.data.format == "synth" and config.name == name
    assert config.model == load_config(preset).model  # the architecture is the preset's, sizes included
    assert config.model.text.name == "minilm" and config.model.text.freeze and not config.model.text.save_weights


def test_lgrnet_small_widens_only_the_reasoning_stack():
    tiny, small = load_config("lgrnet-tiny").model, load_config("lgrnet-small").model
    assert (small.num_layers, small.hidden_dim, small.num_heads, small.ffn_dim) == (6, 256, 8, 1024)
    assert (small.text, small.visual, small.image_size) == (tiny.text, tiny.visual, tiny.image_size)


@pytest.mark.skipif(not has_model(SHIPPED_MODEL_DIR), reason="no shipped model in this build")
def test_shipped_model_is_the_synthref_small_architecture():
    shipped = load_config(SHIPPED_MODEL_DIR / "config.yaml")
    assert shipped.name == "synthref-small" and shipped.model == load_config("lgrnet-small").model
    assert sum(f.stat().st_size for f in SHIPPED_MODEL_DIR.glob("*.safetensors")) <= 20_000_000


def test_export_writes_a_small_fp16_folder_that_reproduces_its_record(work, scratch):
    export = load_script("export_shipped_model")
    out = work["root"] / "exported"
    record = export.export(scratch["out"] / "model", out, "fp16", 20.0, sample_seed=5, sample_num=NUM_EVAL,
                           cache=work["cache"])
    assert has_model(out) and (out / "metrics.json").is_file()
    assert record["sample"]["num"] == NUM_EVAL and record["size_mb"] <= 20.0
    from safetensors import safe_open

    with safe_open(str(out / "model.safetensors"), "pt") as f:
        dtypes = {str(f.get_tensor(k).dtype) for k in f.keys()}  # noqa: SIM118 (a safetensors handle)
    assert "torch.float16" in dtypes and "torch.float32" not in dtypes
    measured, recorded, num = check_recorded(out, work["cache"])
    assert num == NUM_EVAL and measured == recorded
    # Re-exporting an exported folder with other training settings: same weights, the run's record kept.
    record_file = out / "metrics.json"
    record_file.write_text(json.dumps({**json.loads(record_file.read_text()), "run_val": {"acc50": 12.5}}))
    again = work["root"] / "exported-again"
    export.export(out, again, "fp16", 20.0, 5, NUM_EVAL, work["cache"], ["train.batch_size=3", "data.num_workers=0"])
    config = load_config(again / "config.yaml")
    assert (config.train.batch_size, config.data.num_workers) == (3, 0)
    assert json.loads((again / "metrics.json").read_text())["run_val"] == {"acc50": 12.5}
    from safetensors.torch import load_file

    first, second = load_file(str(out / "model.safetensors")), load_file(str(again / "model.safetensors"))
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)
    with pytest.raises(SystemExit, match="cannot change model"):
        export.export(out, work["root"] / "x", "fp16", 20.0, 5, NUM_EVAL, work["cache"], ["model.num_layers=9"])
    # Over the size limit: refused, nothing left behind.
    with pytest.raises(SystemExit, match="over the 0.001 MB limit"):
        export.export(scratch["out"] / "model", work["root"] / "too-big", "fp16", 0.001, 5, NUM_EVAL, work["cache"])
    assert not (work["root"] / "too-big").exists()


def test_backbone_pretraining_writes_a_checkpoint_the_visual_extractor_loads(tmp_path):
    """scripts/pretrain_synth_backbone.py on a small SynthRef set: the dense cell labels match the scene (some cells
    are objects, the rest background), and its output loads through model.visual.checkpoint with every backbone
    tensor used and nothing unexpected."""
    import torch

    from lgrnet.model.checkpoints import load_visual_checkpoint
    from lgrnet.model.visual import VisualExtractor
    from lgrnet.synth import ensure_synthref

    data = tmp_path / "synth"
    ensure_synthref(data, seed=3, num_train=12, num_val=3, num_test=3, workers=1)
    pretrain = load_script("pretrain_synth_backbone")
    cells = pretrain.SceneCells(data, "train", 128, [8, 16], train=False)
    _, labels = cells[0]
    colour = labels["color"][0]
    assert colour.shape == (16, 16) and (colour > 0).any() and (colour == 0).any()
    assert ((labels["shape"][0] > 0) == (colour > 0)).all()

    twin = tmp_path / "twin.yaml"
    twin.write_text(tiny_twin("lgrnet-tiny").to_yaml())
    out = tmp_path / "backbone.safetensors"
    pretrain.main(["--config", str(twin), "--data", str(data), "--max-steps", "2", "--batch-size", "2",
                   "--workers", "0", "--threads", "1", "--out", str(out)])
    summary = json.loads(out.with_suffix(".json").read_text())
    assert summary["steps"] == 2 and set(summary["val_cell_accuracy"]) >= {"color_0", "shape_1", "size_0"}
    config = load_config(twin)
    visual = VisualExtractor(config.model.visual, text_dim=32, image_size=128)
    report = load_visual_checkpoint(visual, out)
    assert not report.missing and not report.unexpected and report.loaded
    from safetensors.torch import load_file

    saved = load_file(str(out))
    key = "backbone.0.body.layer1.0.conv1.weight"
    assert torch.equal(visual.state_dict()["backbone.layer1.0.conv1.weight"], saved[key])


def test_grounding_check_reports_image_and_text_sensitivity(scratch):
    """scripts/grounding_check.py on the quickstart's model folder (its data config points at the cached set)."""
    check = load_script("grounding_check")
    report = check.grounding_check(str(scratch["out"] / "model"), split="val", num=NUM_EVAL)
    assert report["samples"] == NUM_EVAL
    # A random tiny model still reacts to both inputs a little; the two figures are distinct measurements.
    assert report["box_change_images_rotated"] > 0 and report["box_change_texts_rotated"] > 0
    assert 0 < report["attention_entropy"] <= report["uniform_entropy"] + 1e-4
    hits = report["acc50"] * NUM_EVAL / 100  # a share of the NUM_EVAL samples
    assert abs(hits - round(hits)) < 1e-3


def test_fine_tuning_a_trained_model_continues_at_its_final_learning_rate(tmp_path):
    """A shipped (trained) start model is fine-tuned at the rate its recipe ended with (lr x gamma per drop, or
    x min_lr_ratio after a cosine decay); a fresh model trains at the config's rates. Neither run changes the rate
    within the short budget."""
    from lgrnet.quickstart import QuickstartOptions, training_config

    base = load_config(tiny_twin("lgrnet-tiny"), ["train.lr=5e-4", "train.lr_visual=2e-4",
                                                   "train.lr_drop_epochs=[2]", "train.lr_gamma=0.1"])
    options = QuickstartOptions(output_dir=tmp_path, device="cpu")
    tuned = training_config(base, options, tmp_path, tmp_path / "init", fine_tune=True).train
    fresh = training_config(base, options, tmp_path, tmp_path / "init", fine_tune=False).train
    assert tuned.lr == pytest.approx(5e-5) and tuned.lr_visual == pytest.approx(2e-5)
    assert fresh.lr == pytest.approx(5e-4) and fresh.lr_visual == pytest.approx(2e-4)
    assert tuned.lr_drop_epochs == [] and fresh.lr_drop_epochs == []
    cosine = load_config(base, ["train.lr_schedule=cosine", "train.min_lr_ratio=0.02"])
    tuned = training_config(cosine, options, tmp_path, tmp_path / "init", fine_tune=True).train
    fresh = training_config(cosine, options, tmp_path, tmp_path / "init", fine_tune=False).train
    assert tuned.lr == pytest.approx(1e-5) and tuned.lr_visual == pytest.approx(4e-6)
    assert fresh.lr == pytest.approx(5e-4) and tuned.lr_schedule == fresh.lr_schedule == "step"


def test_transfer_weights_copies_what_fits_and_can_repeat_trained_layers(tmp_path, capsys):
    from safetensors.torch import load_file

    from lgrnet.config import apply_overrides
    from lgrnet.model.io import save_model
    from lgrnet.model.lgrnet import LGRNet

    transfer = load_script("transfer_weights")
    config = apply_overrides(tiny_twin("lgrnet-tiny"), ["model.num_layers=2"])
    (tmp_path / "tiny.yaml").write_text(config.to_yaml())
    save_model(LGRNet(config.model, config.loss), config, tmp_path / "trained")
    trained = load_file(str(tmp_path / "trained" / "model.safetensors"))

    args = ["--source", str(tmp_path / "trained"), "--config", str(tmp_path / "tiny.yaml"), "--seed", "3"]
    assert transfer.main([*args, "--set", "model.num_layers=4", "--repeat-layers", "--out", str(tmp_path / "deep")]) == 0
    assert "repeated from trained layers, 0 fresh" in capsys.readouterr().out
    deep = load_file(str(tmp_path / "deep" / "model.safetensors"))
    layer = "reasoning.layers.{}.linear1.weight"
    assert torch.equal(deep[layer.format(2)], trained[layer.format(0)])
    assert torch.equal(deep[layer.format(3)], trained[layer.format(1)])
    assert all(torch.equal(deep[k], v) for k, v in trained.items() if not k.startswith("text."))

    hidden = config.model.hidden_dim * 2
    assert transfer.main([*args, "--set", f"model.hidden_dim={hidden}", "--out", str(tmp_path / "wide")]) == 0
    wide = load_file(str(tmp_path / "wide" / "model.safetensors"))
    backbone = [k for k in trained if k.startswith("visual.backbone.")]
    assert backbone and all(torch.equal(wide[k], trained[k]) for k in backbone)  # same shapes: copied
    assert wide["visual_proj.weight"].shape[0] == hidden  # new width: freshly initialised
    assert transfer.main(["--source", str(tmp_path), "--config", "lgrnet-tiny", "--out", str(tmp_path / "x")]) == 2
    assert "no model.safetensors" in capsys.readouterr().err
