"""The HTTP server (``lgrnet serve``): the grounding endpoint in both request forms, dynamic batching of concurrent
requests, and bad input, each answered with a 4xx and a one-line message while the server keeps working.

Runs the FastAPI app in-process (TestClient, or httpx on the ASGI app for concurrency) on a tiny random-weight
model; boxes are compared with the library's own one-at-a-time ``Predictor.predict``."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from inference_helpers import make_bad_inputs
from PIL import Image

from lgrnet.serve import Batcher, Overloaded, ServerLimits, create_app

EXPRESSIONS = ["the yellow square", "the left edge"]


def _png(width: int = 90, height: int = 60, seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def image_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "scene.png"
    path.write_bytes(_png())
    return path


@pytest.fixture(scope="module")
def client(predictor, image_file):
    limits = ServerLimits(max_body_bytes=200_000, max_image_pixels=40_000, max_expressions=3,
                          max_expression_chars=60, image_root=image_file.parent)
    with TestClient(create_app(predictor, limits)) as test_client:
        yield test_client


def _form(image: bytes, *expressions: str, name: str = "scene.png") -> dict:
    return {"files": {"image": (name, image, "image/png")}, "data": {"expression": list(expressions)}}


def _boxes(body: dict) -> np.ndarray:
    return np.array([p["box_normalized"] + p["coord"] for p in body["predictions"]])


def _single_boxes(predictor, image: Path | Image.Image, expressions: list[str]) -> np.ndarray:
    """One ``predict`` call per expression: the reference the server's batched answers must match."""
    return np.array([list(p.box_normalized) + list(p.coord)
                     for p in (predictor.predict(image, text) for text in expressions)])


# ----------------------------------------------------------------------------------------------------------------
# Good requests

def test_multipart_request_matches_one_at_a_time_prediction(client, predictor, image_file):
    response = client.post("/v1/ground", **_form(image_file.read_bytes(), *EXPRESSIONS))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["schema_version"] == 1
    assert body["model"] == predictor.config.name
    assert body["image_size"] == [90, 60]
    assert [p["expression"] for p in body["predictions"]] == EXPRESSIONS
    assert "model_caveat" not in body  # a model a user trained carries none
    expected = _single_boxes(predictor, image_file, EXPRESSIONS)
    np.testing.assert_allclose(_boxes(body), expected, atol=1e-4)
    for prediction in body["predictions"]:  # pixels are the normalised box times the image size
        np.testing.assert_allclose(prediction["box_xyxy"], np.array(prediction["box_normalized"]) * [90, 60, 90, 60],
                                   atol=0.01)
        assert prediction["expression_truncated"] is False


def test_json_request_with_base64_gives_the_same_boxes(client, predictor, image_file):
    payload = {"image": base64.b64encode(image_file.read_bytes()).decode(), "expressions": EXPRESSIONS}
    response = client.post("/v1/ground", json=payload)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(_boxes(response.json()), _single_boxes(predictor, image_file, EXPRESSIONS), atol=1e-4)
    # One expression as a string; a data URL with line-wrapped base64 (what `base64` prints) is read too.
    wrapped = base64.encodebytes(image_file.read_bytes()).decode()
    response = client.post("/v1/ground", json={"image": "data:image/png;base64," + wrapped, "expression": "a"})
    assert response.status_code == 200, response.text
    assert len(response.json()["predictions"]) == 1


def test_image_path_under_the_image_root(client, predictor, image_file):
    response = client.post("/v1/ground", json={"image_path": image_file.name, "expression": EXPRESSIONS[0]})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(_boxes(response.json()), _single_boxes(predictor, image_file, EXPRESSIONS[:1]),
                               atol=1e-4)
    response = client.post("/v1/ground", json={"image_path": "../" + image_file.name, "expression": "a"})
    assert response.status_code == 403 and "outside" in response.json()["detail"]
    response = client.post("/v1/ground", json={"image_path": "nope.png", "expression": "a"})
    assert response.status_code == 404


def test_image_path_is_refused_without_an_image_root(predictor, image_file):
    with TestClient(create_app(predictor, ServerLimits())) as plain:
        response = plain.post("/v1/ground", json={"image_path": str(image_file), "expression": "a"})
    assert response.status_code == 400 and "by path" in response.json()["detail"]


def test_exif_rotated_upload_is_turned_upright(client, tmp_path):
    cases = {case.name: case for case in make_bad_inputs(tmp_path)}
    response = client.post("/v1/ground", **_form(cases["exif_rotated.jpg"].path.read_bytes(), "a", name="r.jpg"))
    assert response.status_code == 200, response.text
    assert response.json()["image_size"] == [64, 96]  # stored 96x64, displayed (and predicted) upright


def test_model_health_and_openapi(client, predictor):
    model = client.get("/v1/model").json()
    assert model["name"] == predictor.config.name and model["schema_version"] == 1
    assert model["caveat"] is None
    assert model["config"]["image_size"] == predictor.config.model.image_size
    assert model["config"]["max_length"] == predictor.config.model.text.max_length
    assert model["limits"]["max_expressions"] == 3 and model["limits"]["image_paths"] is True
    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert client.get("/docs").status_code == 200
    ground = client.get("/openapi.json").json()["paths"]["/v1/ground"]["post"]
    assert set(ground["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    assert {"200", "400", "413", "422"} <= set(ground["responses"])


def test_a_model_caveat_is_in_every_answer(predictor, image_file):
    predictor.caveat = "boxes of this model are not meaningful on photographs"
    try:
        with TestClient(create_app(predictor)) as caveat_client:
            body = caveat_client.post("/v1/ground", **_form(image_file.read_bytes(), "a")).json()
            assert body["model_caveat"] == predictor.caveat
            assert caveat_client.get("/v1/model").json()["caveat"] == predictor.caveat
    finally:
        predictor.caveat = None


# ----------------------------------------------------------------------------------------------------------------
# Batching

def _count_forwards(predictor) -> tuple[list[int], object]:
    sizes: list[int] = []
    handle = predictor.model.register_forward_hook(lambda _m, args, _out: sizes.append(int(args[0].shape[0])))
    return sizes, handle


def _post_concurrently(app, requests: list[tuple[bytes, str]]) -> list[httpx.Response]:
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://serve.test", timeout=120) as http:
            return await asyncio.gather(*(http.post("/v1/ground", **_form(image, text)) for image, text in requests))

    return asyncio.run(main())


@pytest.mark.parametrize("max_batch", [8, 1])
def test_concurrent_requests_share_forward_passes(predictor, max_batch):
    """Six requests at once: with batching they take fewer forward passes than requests (the first waits up to
    a second for the rest); with --max-batch 1 one each. The boxes are those of one-at-a-time prediction."""
    images = [_png(40 + 10 * i, 50, seed=i) for i in range(6)]
    texts = [f"object number {i}" for i in range(6)]
    app = create_app(predictor, ServerLimits(max_batch=max_batch, max_wait_ms=1000))
    sizes, handle = _count_forwards(predictor)
    try:
        responses = _post_concurrently(app, list(zip(images, texts)))
    finally:
        handle.remove()
        app.state.batcher.close()
    assert [r.status_code for r in responses] == [200] * 6
    if max_batch == 1:
        assert sizes == [1] * 6
    else:
        assert len(sizes) < 6 and sum(sizes) == 6 and max(sizes) > 1, sizes
    expected = np.concatenate([_single_boxes(predictor, Image.open(io.BytesIO(image)), [text])
                               for image, text in zip(images, texts)])
    np.testing.assert_allclose(np.concatenate([_boxes(r.json()) for r in responses]), expected, atol=1e-4)
    assert app.state.batcher.stats.pairs == 6 and app.state.batcher.stats.forwards == len(sizes)


class _SlowPredictor:
    """Stands in for a Predictor: predict_many waits for ``release``, and fails when told to."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.fail_next = False

    def predict_many(self, pairs, batch_size=None, threshold=None):
        self.release.wait(30)
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("out of memory")
        return [f"prediction of {text}" for _image, text in pairs]


def test_batcher_refuses_beyond_max_pending_and_survives_a_failed_forward():
    slow = _SlowPredictor()
    batcher = Batcher(slow, max_batch=1, max_wait_ms=0, max_pending=2)  # type: ignore[arg-type]
    image = Image.new("RGB", (4, 4))
    try:
        first = batcher.submit([(image, "a"), (image, "b")])
        with pytest.raises(Overloaded, match="busy"):
            batcher.submit([(image, "c")])
        slow.release.set()
        assert [f.result(30) for f in first] == ["prediction of a", "prediction of b"]
        assert batcher.pending == 0
        slow.fail_next = True
        with pytest.raises(RuntimeError, match="out of memory"):
            batcher.submit([(image, "d")])[0].result(30)
        assert batcher.submit([(image, "e")])[0].result(30) == "prediction of e"  # the worker lives on
    finally:
        batcher.close()


# ----------------------------------------------------------------------------------------------------------------
# Bad input: 4xx with a one-line message, and the server keeps answering

def _chunks(data: bytes):
    for start in range(0, len(data), 4096):
        yield data[start:start + 4096]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, bytes]:
    return {case.name: case.path.read_bytes() for case in make_bad_inputs(tmp_path_factory.mktemp("corpus"))}


BAD_REQUESTS = [
    # (id, how to send it, status, words the message must contain)
    ("not-an-image", lambda c: {**_form(c["text.jpg"], "a", name="notes.jpg")}, 422, ["'notes.jpg'", "unreadable"]),
    ("truncated-jpeg", lambda c: _form(c["truncated.jpg"], "a", name="t.jpg"), 422, ["'t.jpg'", "truncated"]),
    ("truncated-png", lambda c: _form(c["truncated.png"], "a", name="t.png"), 422, ["'t.png'"]),
    ("corrupt-png", lambda c: _form(c["corrupt.png"], "a"), 422, ["unreadable"]),
    ("empty-file", lambda c: _form(b"", "a"), 422, ["empty"]),
    ("decompression-bomb", lambda c: _form(c["bomb.png"], "a"), 422, ["decompression bomb"]),
    ("over-pixel-limit", lambda c: _form(_png(300, 200), "a"), 422, ["300x200", "40,000"]),
    ("empty-expression", lambda c: _form(_png(), "   "), 422, ["expression 1", "empty"]),
    ("second-expression-empty", lambda c: _form(_png(), "a", ""), 422, ["expression 2", "empty"]),
    ("over-long-expression", lambda c: _form(_png(), "x" * 61), 422, ["expression 1", "61", "60"]),
    ("too-many-expressions", lambda c: _form(_png(), "a", "b", "c", "d"), 422, ["4 expressions", "3"]),
    ("no-readable-word", lambda c: _form(_png(), "\u200b\u200b"), 422, ["expression 1", "tokenizer"]),
    ("no-expression", lambda c: {"files": {"image": ("a.png", _png(), "image/png")}}, 400, ["expression", "missing"]),
    ("no-image", lambda c: {"files": {"expression": (None, "a")}}, 400, ["image", "missing"]),
    ("unknown-field", lambda c: {"files": {"image": ("a.png", _png()), "other": (None, "x")},
                                 "data": {"expression": "a"}}, 400, ["'other'"]),
    ("wrong-field", lambda c: {"files": {"img": ("a.png", _png())}, "data": {"expression": "a"}}, 400,
     ["'img'", "image, expression"]),
    ("image-as-text", lambda c: {"files": {"image": (None, "photo.jpg")}, "data": {"expression": "a"}}, 400,
     ["file upload"]),
    ("url-encoded-form", lambda c: {"data": {"image": "photo.jpg", "expression": "a"}}, 415, ["multipart"]),
    ("two-images", lambda c: {"files": [("image", ("a.png", _png())), ("image", ("b.png", _png()))],
                              "data": {"expression": "a"}}, 400, ["one image"]),
    ("expression-as-file", lambda c: {"files": [("image", ("a.png", _png())), ("expression", ("e.txt", b"a"))]},
     400, ["expression 1", "file"]),
    ("not-json", lambda c: {"content": b"{not json", "headers": {"content-type": "application/json"}}, 400,
     ["not valid JSON"]),
    ("json-not-utf8", lambda c: {"content": b"\xff\xfe{", "headers": {"content-type": "application/json"}}, 400,
     ["JSON"]),
    ("json-list", lambda c: {"json": ["a"]}, 400, ["JSON object", "list"]),
    ("json-unknown-key", lambda c: {"json": {"img": "xx", "expression": "a"}}, 400, ["'img'"]),
    ("json-bad-base64", lambda c: {"json": {"image": "not base64!", "expression": "a"}}, 400, ["base64"]),
    ("json-base64-not-an-image", lambda c: {"json": {"image": base64.b64encode(b"hello").decode(),
                                                     "expression": "a"}}, 422, ["(base64)", "unreadable"]),
    ("json-lone-surrogate", lambda c: {"content": b'{"image": "", "expression": "\\ud800 cat"}',
                                       "headers": {"content-type": "application/json"}}, 422, ["Unicode"]),
    ("json-path-lone-surrogate", lambda c: {"content": b'{"image_path": "\\ud800.png", "expression": "a"}',
                                            "headers": {"content-type": "application/json"}}, 422, ["image_path"]),
    ("json-image-not-string", lambda c: {"json": {"image": 5, "expression": "a"}}, 400, ["base64 string", "int"]),
    ("json-expression-not-string", lambda c: {"json": {"image": "", "expression": 5}}, 422, ["expected a string"]),
    ("json-expressions-not-list", lambda c: {"json": {"image": "", "expressions": "a"}}, 400, ["list"]),
    ("json-both-expression-fields", lambda c: {"json": {"image": "", "expression": "a", "expressions": ["b"]}}, 400,
     ["either"]),
    ("json-deeply-nested", lambda c: {"content": b"[" * 100_000, "headers": {"content-type": "application/json"}},
     400, ["JSON"]),
    ("wrong-content-type", lambda c: {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415,
     ["text/plain"]),
    ("no-content-type", lambda c: {"content": b"hello"}, 415, ["Content-Type"]),
    ("multipart-without-boundary", lambda c: {"content": b"--x\r\n", "headers": {"content-type":
                                                                                 "multipart/form-data"}}, 400,
     ["multipart"]),
    ("body-over-limit", lambda c: _form(b"\0" * 300_000, "a"), 413, ["200,000"]),
    ("chunked-body-over-limit", lambda c: {"content": _chunks(b"{" + b" " * 300_000),
                                           "headers": {"content-type": "application/json"}}, 413, ["200,000"]),
    ("bad-content-length", lambda c: {"content": b"{}", "headers": {"content-type": "application/json",
                                                                    "content-length": "lots"}}, 400,
     ["Content-Length"]),
]


@pytest.mark.parametrize("make, status, words", [pytest.param(*case[1:], id=case[0]) for case in BAD_REQUESTS])
def test_bad_requests_get_a_one_line_4xx(client, corpus, make, status, words):
    response = client.post("/v1/ground", **make(corpus))
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and detail, detail
    for word in words:
        assert word in detail, (word, detail)


def test_wrong_method_and_path_are_4xx(client):
    assert client.get("/v1/ground").status_code == 405
    assert client.post("/v1/nothing").status_code == 404


def test_the_server_keeps_working_after_bad_requests(client, corpus, image_file, predictor):
    """A mixed burst on one app: every bad request a 4xx, every good one the right box, none 5xx."""
    good = _form(image_file.read_bytes(), EXPRESSIONS[0])
    expected = _single_boxes(predictor, image_file, EXPRESSIONS[:1])
    for number, (_case_id, make, status, _words) in enumerate(BAD_REQUESTS):
        assert client.post("/v1/ground", **make(corpus)).status_code == status
        if number % 4 == 3:
            response = client.post("/v1/ground", **good)
            assert response.status_code == 200
            np.testing.assert_allclose(_boxes(response.json()), expected, atol=1e-4)
    assert client.get("/healthz").json()["pending"] == 0


def test_a_client_name_with_newlines_stays_on_one_line(client, corpus):
    response = client.post("/v1/ground", **_form(corpus["text.jpg"], "a", name="evil\nname.jpg"))
    assert response.status_code == 422 and "\n" not in response.json()["detail"]


# ----------------------------------------------------------------------------------------------------------------
# The command

def test_serve_on_a_port_in_use_is_a_one_line_error(checkpoint, capsys):
    from lgrnet.cli import main

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(["serve", "--checkpoint", str(checkpoint), "--device", "cpu", "--port", str(port),
                     "--log-level", "critical"])
    err = capsys.readouterr().err
    assert code == 2
    assert f"lgrnet serve: error: could not listen on 127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_limits_are_checked(tmp_path):
    from lgrnet.errors import LGRNetError

    with pytest.raises(LGRNetError, match="--max-batch"):
        ServerLimits(max_batch=0)
    with pytest.raises(LGRNetError, match="--max-wait-ms"):
        ServerLimits(max_wait_ms=float("nan"))
    with pytest.raises(LGRNetError, match="--image-root"):
        ServerLimits(image_root=tmp_path / "missing")


# ----------------------------------------------------------------------------------------------------------------
# Load (slow): real servers on 127.0.0.1, the shipped model

@pytest.mark.slow
def test_load_with_and_without_batching_without_errors(tmp_path):
    """benchmarks/serve_load.py with 8 clients for 10 s per mode: no 5xx, every bad request a 4xx, every good one
    a 200; concurrent requests share forward passes when batching is on, and memory does not climb. (Which mode
    serves more requests per second is the benchmark's table to report, not a test's: it depends on the machine's
    load.)"""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
    out = tmp_path / "load.json"
    run = subprocess.run([sys.executable, str(script), "--clients", "8", "--seconds", "10", "--json", str(out)],
                         capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout + run.stderr
    on, off = json.loads(out.read_text())["results"]
    for result in (on, off):
        assert result["server_errors"] == 0 and result["bad"] > 0 and result["bad_4xx"] == result["bad"]
        assert result["rss_end_mb"] < result["rss_start_mb"] * 1.2, result
    assert off["mean_batch_size"] == 1.0 and on["mean_batch_size"] > 1.5
    assert on["requests_per_s"] > 0 and off["requests_per_s"] > 0


def test_serve_caps_malloc_arenas_unless_the_environment_does(monkeypatch):
    """`lgrnet serve` caps glibc's arenas itself (its memory grew under batching without it), but never overrides
    a MALLOC_ARENA_MAX the user set."""
    import platform

    from lgrnet.commands.serve import limit_malloc_arenas

    monkeypatch.setenv("MALLOC_ARENA_MAX", "4")
    assert limit_malloc_arenas() is False
    monkeypatch.delenv("MALLOC_ARENA_MAX")
    expected = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    assert limit_malloc_arenas() is expected
