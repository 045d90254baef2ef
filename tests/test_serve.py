"""`fmnist serve` at the HTTP level (FastAPI's TestClient): every endpoint, every bad input, batching.

The model is a tiny run on generated data: what is tested here is that the server answers what
`fmnist predict` answers for the same bytes, and one JSON line for everything else. The real
server (uvicorn), 200 clients at once, memory, signals and the page in a real browser are in
test_serve_live.py.
"""

from __future__ import annotations

import asyncio
import builtins
import io
import json
import socket
import struct
import subprocess
import sys
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import train_tiny_run
from fmnist.cli import main
from fmnist.data.images import to_fashion_mnist
from fmnist.errors import CheckpointError, ConfigError
from fmnist.inference import class_probabilities, load_model, predict
from fmnist.runs.folder import read_summary

try:
    import uvicorn
    from fastapi.testclient import TestClient

    from fmnist.serve.app import ServeSettings, create_app, model_card, prepare_image
    from fmnist.serve.batching import InferenceQueue
    from fmnist.serve.server import AnnouncingServer, address_to_open, listening_socket, listens_everywhere
except ImportError as error:  # fail, not skip: CI must run these
    pytest.fail(f"{error.name} is missing: the serve tests need `pip install -e '.[serve,dev]'` "
                "(make test installs it)", pytrace=False)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("serve")
    return train_tiny_run(root, "serve", limit_batches=3)


@pytest.fixture(scope="module")
def model(tiny_run):
    return load_model(tiny_run)


@pytest.fixture(scope="module")
def client(model):
    with TestClient(create_app(model)) as client:
        yield client


@pytest.fixture(scope="module")
def small_limit_client(model):
    """A server taking bodies of at most 5,000 bytes and 3 files, to test the limits cheaply."""
    with TestClient(create_app(model, ServeSettings(max_upload_bytes=5000, max_files=3))) as client:
        yield client


def item(seed: int = 0, light_background: bool = False) -> np.ndarray:
    """A 28x28 uint8 picture of a bright bar on noise, like the generated data set's items."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, size=(28, 28)).astype(np.uint8)
    image[2 + 2 * (seed % 10): 4 + 2 * (seed % 10), 4:24] = 250
    return 255 - image if light_background else image


def encoded(array: np.ndarray, image_format: str = "PNG", mode: str | None = None, **options) -> bytes:
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def assert_one_line_error(response, status: int, fragment: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"] == "application/json"
    message = response.json()["error"]
    assert fragment in message, message
    assert "\n" not in message and "Traceback" not in message and "object at 0x" not in message, message
    return message


# --- the endpoints ---------------------------------------------------------------------------


def test_the_page_is_one_file_with_no_external_assets(client):
    response = client.get("/")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    page = response.text
    for element in ('id="file-input"', 'id="canvas"', 'id="input-preview"', 'id="bars"', 'id="error"',
                    'id="model-name"', 'id="model-recipe"', 'id="model-accuracy"'):
        assert element in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "src=" not in page


def test_the_test_client_runs_on_httpx2_as_starlette_expects():
    # With plain httpx, starlette 1.x warns (StarletteDeprecationWarning) on every test run.
    import starlette.testclient

    assert starlette.testclient.httpx.__name__ == "httpx2", "pip install -e '.[dev]' (it brings httpx2)"


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.json()["status"] == "ok"
    assert response.json()["images"] >= response.json()["forward_passes"] >= 0


def test_model_describes_the_run(client, model, tiny_run):
    card = client.get("/model").json()
    assert card["model"] == model.info["model"] and card["epoch"] == model.info["epoch"]
    assert card["recipe"] is None  # trained from options, not a recipe
    assert card["test_accuracy"] == read_summary(tiny_run)["test_accuracy"]
    assert card["classes"][9] == "Ankle boot" and len(card["classes"]) == 10
    assert card["normalization"] == {"mean": model.mean, "std": model.std}
    assert card["limits"]["max_upload_bytes"] == 10_000_000 and card["limits"]["max_pixels"] == 40_000_000
    assert str(tiny_run.parent) not in json.dumps(card)  # folder names only, no server paths


def test_test_accuracy_only_for_the_checkpoint_it_was_measured_on(model, tiny_run, tmp_path):
    elsewhere = tmp_path / "copy.pt"
    elsewhere.write_bytes((tiny_run / "best.pt").read_bytes())
    assert model_card(load_model(elsewhere), ServeSettings())["test_accuracy"] is None
    (tmp_path / "summary.json").write_text("{broken")  # a damaged summary: served anyway, without it
    assert model_card(load_model(elsewhere), ServeSettings())["test_accuracy"] is None


def test_docs_stay_on_and_describe_the_upload(client):
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "application/octet-stream" in body
    assert {"/model", "/healthz"} <= set(schema["paths"])


def test_model_shows_where_the_model_is_weak_and_how_its_probabilities_are_calibrated(client, model, tiny_run):
    card = client.get("/model").json()
    summary = read_summary(tiny_run)
    assert list(card["per_class_accuracy"]) == card["classes"]
    assert list(card["per_class_accuracy"].values()) == pytest.approx(summary["test_per_class_accuracy"], nan_ok=True)
    assert card["confusion_matrix"]["counts"] == summary["test_confusion_matrix"]["counts"]
    assert card["confusion_matrix"]["rows"] == "true class"
    assert card["calibration"] == {"temperature": model.temperature, "test_ece": summary["test_ece_calibrated"]}
    assert model.temperature is not None and card["explain"] is True


def test_weaknesses_only_for_the_checkpoint_they_were_measured_on(tiny_run, tmp_path):
    elsewhere = tmp_path / "copy.pt"
    elsewhere.write_bytes((tiny_run / "best.pt").read_bytes())
    card = model_card(load_model(elsewhere), ServeSettings())
    assert card["per_class_accuracy"] is None and card["confusion_matrix"] is None
    assert card["calibration"] == {"temperature": None, "test_ece": None}


def test_predict_with_explain_answers_the_map_that_predict_explain_draws(client, model):
    from fmnist.explain import attribution_maps

    images = [item(3), item(5)]
    files = [("file", (f"{index}.png", encoded(image), "image/png")) for index, image in enumerate(images)]
    plain = client.post("/predict", files=files).json()
    assert all("map" not in answer for answer in plain)
    answers = client.post("/predict?explain=true", files=files).json()
    seen = torch.tensor([answer["input"] for answer in answers], dtype=torch.uint8).reshape(-1, 28, 28)
    expected = attribution_maps(model, seen)
    for answer, wanted in zip(answers, expected, strict=True):
        assert len(answer["map"]) == 784 and 0 <= min(answer["map"]) and max(answer["map"]) == pytest.approx(1.0)
        assert answer["map"] == pytest.approx(wanted.flatten().tolist(), abs=1e-4)
        assert answer["probabilities"] == next(p for p in plain if p["file"] == answer["file"])["probabilities"]


def test_docs_load_everything_from_this_server(client):
    """/docs (and /redoc) reference no other origin: Swagger UI's script and style come from here."""
    import re

    for page in ("/docs", "/redoc"):
        html = client.get(page).text
        assert re.findall(r"https?://", html) == [], page
        for asset in re.findall(r"(?:src|href)=['\"]?([^'\" >]+)", html) + re.findall(r"url: ?'([^']+)'", html):
            assert asset.startswith("/"), (page, asset)
            assert client.get(asset).status_code == 200, asset


def test_predict_answers_what_fmnist_predict_answers(client, model, tmp_path):
    path = tmp_path / "bar.png"
    path.write_bytes(encoded(item(3)))
    response = client.post("/predict", files={"file": ("bar.png", path.read_bytes(), "image/png")})
    assert response.status_code == 200
    (answer,) = response.json()
    (expected,) = predict(model, [path])
    assert answer["file"] == "bar.png"
    assert list(answer["probabilities"].values()) == pytest.approx(expected.probabilities, abs=1e-6)
    assert [entry["class"] for entry in answer["predictions"]] == [name for name, _ in expected.top(3)]
    assert sum(answer["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert answer["input"] == item(3).flatten().tolist()  # a 28x28 PNG is what the model sees, unchanged


def test_the_raw_body_is_an_image_too(client):
    data = encoded(item(4))
    raw = client.post("/predict?top_k=1", content=data, headers={"content-type": "image/png"}).json()
    multipart = client.post("/predict?top_k=1", files={"file": ("x.png", data)}).json()
    assert raw[0]["file"] == "body" and len(raw[0]["predictions"]) == 1
    assert raw[0]["probabilities"] == pytest.approx(multipart[0]["probabilities"], abs=1e-6)
    # curl --data-binary sends form-urlencoded unless told otherwise: the bytes still count
    plain = client.post("/predict", content=data, headers={"content-type": "application/x-www-form-urlencoded"})
    assert plain.status_code == 200


def test_several_files_are_each_answered_in_order_as_predict_json(client, model, tmp_path):
    names = ["a.png", "notes.txt", "b.jpg"]
    (tmp_path / "a.png").write_bytes(encoded(item(1)))
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "b.jpg").write_bytes(encoded(item(2, light_background=True), "JPEG", quality=95))
    files = [("file", (name, (tmp_path / name).read_bytes())) for name in names]
    response = client.post("/predict?top_k=2", files=files)
    assert response.status_code == 200
    answers = response.json()
    expected = [prediction.to_dict(2) for prediction in predict(model, [tmp_path / name for name in names],
                                                                skip_unreadable=True)]
    assert [answer["file"] for answer in answers] == names
    for answer, reference in zip(answers, expected, strict=True):
        if "error" in reference:
            assert "input" not in answer and answer["error"] == reference["error"].replace(str(tmp_path) + "/", "")
        else:
            assert [entry["class"] for entry in answer["predictions"]] == [
                entry["class"] for entry in reference["predictions"]]
            assert answer["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-6)


def test_invert_is_automatic_unless_turned_off(client):
    on_white = encoded(item(5, light_background=True))
    inverted = client.post("/predict", files={"file": ("w.png", on_white)}).json()[0]["input"]
    kept = client.post("/predict?invert=false", files={"file": ("w.png", on_white)}).json()[0]["input"]
    assert inverted == item(5).flatten().tolist() and kept == item(5, light_background=True).flatten().tolist()


@pytest.mark.parametrize("image_format, mode, options", [
    ("JPEG", "CMYK", {}),       # print-shop JPEGs
    ("PNG", "I;16", {}),        # 16-bit gray
    ("PNG", "LA", {}),          # gray with transparency
    ("PNG", "P", {"transparency": 0}),
    ("BMP", "1", {}),           # 1-bit
    ("WEBP", "RGB", {"lossless": True}),
    ("GIF", "P", {}),
])
def test_every_mode_of_the_supported_formats_is_answered(client, image_format, mode, options):
    data = encoded(item(6), image_format, mode, **options)
    response = client.post("/predict", files={"file": (f"x.{image_format.lower()}", data)})
    assert response.status_code == 200, response.text
    assert sum(response.json()[0]["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)


# --- bad input: one JSON line, 4xx, and the server goes on ----------------------------------------


def huge_png() -> bytes:
    """7,000 x 6,000 black pixels: 42 megapixels (above the cap of 40) in about 40 kB."""
    return encoded(np.zeros((6000, 7000), dtype=np.uint8))


def png_claiming(width: int, height: int) -> bytes:
    """A PNG header that claims width x height pixels, with almost no pixel data behind it."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(1000))) + chunk(b"IEND", b""))


SVG = b'<svg xmlns="http://www.w3.org/2000/svg" width="28" height="28"><rect width="9" height="9"/></svg>'

BAD_UPLOADS = {
    "text": (b"just some text\n", 422, "not an image Pillow can read"),
    "truncated": (encoded(item(7))[:60], 422, "cannot decode the image"),
    "tiff": (encoded(item(7), "TIFF"), 422, "not an image Pillow can read"),  # a format the server does not decode
    "pixel-cap": (huge_png(), 422, "more than fmnist reads (40 megapixels)"),
    "pixel-bomb": (png_claiming(100_000, 100_000), 422, "more pixels than fmnist reads"),  # 10 gigapixels
    "svg": (SVG, 422, "not an image Pillow can read"),
}


@pytest.mark.parametrize("kind", BAD_UPLOADS)
def test_an_unreadable_image_is_a_422_line_as_file_and_as_body(client, kind):
    data, status, fragment = BAD_UPLOADS[kind]
    message = assert_one_line_error(client.post("/predict", files={"file": ("upload.bin", data)}), status, fragment)
    assert message.startswith("upload.bin: ")
    assert_one_line_error(client.post("/predict", content=data), status, fragment)
    assert client.get("/healthz").status_code == 200


def test_an_unsupported_mode_is_a_422_line(client, monkeypatch):
    def no_gray(image):
        raise ValueError("conversion from HSV to L not supported")

    monkeypatch.setattr("fmnist.data.images.to_grayscale", no_gray)
    assert_one_line_error(client.post("/predict", files={"file": ("x.png", encoded(item(8)))}), 422,
                          "cannot be made gray (conversion from HSV to L not supported)")


def test_a_1x1_image_is_answered(client):
    response = client.post("/predict", files={"file": ("dot.png", encoded(np.full((1, 1), 200, dtype=np.uint8)))})
    assert response.status_code == 200 and len(response.json()[0]["input"]) == 784


@pytest.mark.parametrize("image_format", ["GIF", "WEBP", "PNG"])
def test_an_animated_image_is_read_by_its_first_frame(client, image_format):
    frames = [Image.fromarray(item(seed)) for seed in (1, 2, 3)]
    options = {"lossless": True} if image_format == "WEBP" else {}
    buffer = io.BytesIO()
    frames[0].save(buffer, format=image_format, save_all=True, append_images=frames[1:], duration=100, loop=0,
                   **options)
    animated = client.post("/predict", files={"file": ("a", buffer.getvalue())})
    still = client.post("/predict", files={"file": ("a", encoded(item(1), image_format, **options))})
    assert animated.status_code == 200, animated.text
    assert animated.json()[0]["input"] == still.json()[0]["input"]


@pytest.mark.parametrize("content_type", ["application/json", "image/svg+xml", "text/plain; charset=utf-8",
                                          "application/octet-stream", "image/jpeg"])
def test_the_bytes_decide_the_format_not_the_content_type(client, content_type):
    png_answer = client.post("/predict", content=encoded(item(2)), headers={"content-type": content_type})
    assert png_answer.status_code == 200 and png_answer.json()[0]["file"] == "body"
    assert_one_line_error(client.post("/predict", content=SVG, headers={"content-type": content_type}), 422,
                          "not an image")


@pytest.mark.parametrize("name, shown", [
    ("ünïcödé 画像.png", "ünïcödé 画像.png"), ("a/b/c.png", "c.png"), ("C:\\x\\y.png", "y.png"),
    ("x" * 5000 + ".png", "x" * 100), ("\u202eevil.png", "evil.png"), ("/", "file 1"), ("tab\tname.png", None),
])
def test_odd_file_names_come_back_as_one_short_printable_name(client, name, shown):
    response = client.post("/predict", files={"file": (name, b"text")})
    assert response.status_code in (400, 422), response.text
    message = assert_one_line_error(response, response.status_code, "")
    if response.status_code == 422 and shown is not None:
        assert message.startswith(shown + ": ") or message.startswith(shown), message
    assert len(message) < 400 and all(character.isprintable() for character in message)
    assert client.get("/healthz").status_code == 200


def test_file_names_are_one_short_printable_line(client):
    response = client.post("/predict", files={"file": ("../dir\\evil\nname\x1b[31m.txt", b"text")})
    message = assert_one_line_error(response, 422, "not an image")
    assert message.startswith("evil") and "dir" not in message and "\x1b" not in message


@pytest.mark.parametrize("request_options, status, fragment", [
    ({"content": b""}, 400, "no image"),
    ({"files": {"image": ("x.png", b"...")}}, 400, "no multipart field `file` (fields sent: image)"),
    ({"data": {"file": "a text field"}, "files": {"other": ("x", b"")}}, 400, "holds text, not a file"),
    ({"content": b"garbage", "headers": {"content-type": "multipart/form-data; boundary=xyz"}}, 400, ""),
])
def test_a_request_without_an_image_is_a_400_line(client, request_options, status, fragment):
    assert_one_line_error(client.post("/predict", **request_options), status, fragment)


@pytest.mark.parametrize("query, fragment", [
    ("top_k=0", "top_k: Input should be greater than or equal to 1"),
    ("top_k=11", "top_k: Input should be less than or equal to 10"),
    ("top_k=three", "top_k: Input should be a valid integer"),
    ("invert=maybe", "invert: Input should be a valid boolean"),
])
def test_bad_query_options_are_422_lines(client, query, fragment):
    assert_one_line_error(client.post(f"/predict?{query}", content=encoded(item(0))), 422, fragment)


def test_unknown_paths_are_lines_too(client):
    assert_one_line_error(client.get("/nothing"), 404, "no such page: /nothing (the API: POST /predict")


@pytest.mark.parametrize("method, path, allowed", [
    ("GET", "/predict", "POST"), ("DELETE", "/predict", "POST"), ("PUT", "/predict", "POST"),
    ("PATCH", "/predict", "POST"), ("OPTIONS", "/predict", "POST"), ("BREW", "/predict", "POST"),
    ("POST", "/", "GET"), ("DELETE", "/model", "GET"), ("PUT", "/healthz", "GET"), ("POST", "/docs", "GET"),
])
def test_a_method_an_endpoint_does_not_take_is_a_405_line_with_allow(client, method, path, allowed):
    response = client.request(method, path)
    message = assert_one_line_error(response, 405, f"{method} {path}: not allowed; {path} takes ")
    assert allowed in response.headers["allow"] and allowed in message.rsplit("takes", 1)[1], message
    assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize("content_type", [
    "Multipart/Form-Data; boundary={}", "MULTIPART/FORM-DATA; boundary={}", " multipart/form-data ; boundary={}",
])
def test_the_content_type_is_read_as_http_defines_it_case_and_spaces_aside(client, content_type):
    request = client.build_request("POST", "/predict", files={"file": ("x.png", encoded(item(0)))})
    boundary = request.headers["content-type"].split("boundary=")[1]
    response = client.post("/predict", content=request.read(),
                           headers={"content-type": content_type.format(boundary)})
    assert response.status_code == 200, response.text
    assert response.json()[0]["file"] == "x.png"


@pytest.mark.parametrize("content_type, body, fragment", [
    ("multipart/form-data", b"--x\r\n", "the multipart body cannot be read (Missing boundary in multipart.)"),
    ("multipart/form-data; boundary=xyz", b"garbage", "the multipart body cannot be read (Invalid multipart data.)"),
    ("multipart/form-data; boundary=b", b'--b\r\nX: y\r\n\r\n\x89PNG\r\n--b--\r\n', "cannot be read"),
])
def test_a_malformed_multipart_body_is_a_400_line_that_says_what_to_send(client, content_type, body, fragment):
    message = assert_one_line_error(client.post("/predict", content=body, headers={"content-type": content_type}),
                                    400, fragment)
    assert "as the multipart field `file`" in message


def test_a_client_gone_before_its_whole_body_is_a_line_in_the_log_not_a_traceback(model, caplog):
    """A Content-Length that promises more than comes (the client then hangs up): the app handles it."""
    app = create_app(model)
    sent = []

    async def receive():
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    for content_type in (b"image/png", b"multipart/form-data; boundary=xyz"):
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
                 "scheme": "http", "path": "/predict", "raw_path": b"/predict", "root_path": "", "query_string": b"",
                 "headers": [(b"content-type", content_type), (b"content-length", b"100")], "server": ("t", 80),
                 "client": ("c", 1)}
        with caplog.at_level("INFO", logger="fmnist.serve"):
            asyncio.run(app(scope, receive, send))  # before: starlette's ClientDisconnect, uvicorn's traceback
        assert sent[-2]["status"] == 400
    assert "the client closed the connection before sending the whole body" in caplog.text


def test_a_body_above_the_limit_is_413_declared_or_streamed(small_limit_client):
    big = bytes(5001)
    assert_one_line_error(small_limit_client.post("/predict", content=big), 413, "limit of 0.005 MB")

    def chunks():  # no Content-Length: counted as it arrives
        yield bytes(3000)
        yield bytes(3000)

    assert_one_line_error(small_limit_client.post("/predict", content=chunks()), 413, "--max-upload-mb")
    assert_one_line_error(small_limit_client.post("/predict", files={"file": ("x.png", big)}), 413, "limit")
    assert small_limit_client.post("/predict", content=encoded(item(0))).status_code == 200  # 300-odd bytes


def test_the_default_limit_is_10_mb(client):
    assert_one_line_error(client.post("/predict", content=bytes(10_000_001)), 413, "limit of 10 MB")


def test_too_many_files_is_a_400_line(small_limit_client):
    files = [("file", (f"{index}.png", encoded(item(index)))) for index in range(4)]
    assert_one_line_error(small_limit_client.post("/predict", files=files), 400, "Too many files")


def test_a_model_that_outputs_nan_is_a_500_line_not_a_traceback(model, monkeypatch):
    def not_finite(model, images):
        raise CheckpointError("the model's output is not finite (NaN or infinite weights?)")

    monkeypatch.setattr("fmnist.serve.batching.class_probabilities", not_finite)
    with TestClient(create_app(model)) as client:
        assert_one_line_error(client.post("/predict", content=encoded(item(0))), 500, "not finite")
        assert client.get("/healthz").status_code == 200


# --- batching ----------------------------------------------------------------------------------


def run_together(model, max_batch: int, images: list[torch.Tensor]) -> tuple[list, InferenceQueue]:
    """Each image from its own task, all at once, through one queue."""
    queue = InferenceQueue(model, max_batch)

    async def everyone():
        async with queue.running():
            return await asyncio.gather(*(queue.classify([image]) for image in images))

    return [rows[0] for rows in asyncio.run(everyone())], queue


def test_concurrent_requests_share_forward_passes_and_get_their_own_answers(model):
    images = [prepare_image(encoded(item(seed)), "x", True) for seed in range(40)]
    alone = [class_probabilities(model, [image])[0] for image in images]
    together, queue = run_together(model, 16, images)
    for mine, reference in zip(together, alone, strict=True):
        assert mine == pytest.approx(reference, abs=1e-5)
    assert queue.images == 40 and queue.passes < 40  # the first goes alone, then batches of at most 16
    assert queue.passes >= 40 / 16


def test_max_batch_1_is_one_image_per_pass(model):
    images = [prepare_image(encoded(item(seed)), "x", True) for seed in range(6)]
    _, queue = run_together(model, 1, images)
    assert queue.passes == queue.images == 6


def test_a_failing_forward_pass_fails_its_requests_not_the_queue(model, monkeypatch):
    images = [to_fashion_mnist(Image.fromarray(item(seed))) for seed in range(3)]
    queue = InferenceQueue(model)
    calls = []

    def flaky(model, batch):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return class_probabilities(model, batch)

    monkeypatch.setattr("fmnist.serve.batching.class_probabilities", flaky)

    async def two_requests():
        async with queue.running():
            with pytest.raises(RuntimeError, match="out of memory"):
                await queue.classify(images[:1])
            return await queue.classify(images)

    assert len(asyncio.run(two_requests())) == 3


# --- the command ---------------------------------------------------------------------------------


def test_without_the_extra_the_command_says_how_to_install_it(tiny_run, monkeypatch, capsys):
    real_import = builtins.__import__

    def import_without_uvicorn(name, *args, **kwargs):
        if name == "uvicorn":
            raise ModuleNotFoundError("No module named 'uvicorn'", name="uvicorn")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_without_uvicorn)
    assert main(["serve", str(tiny_run)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "uvicorn is not installed" in err and "pip install -e '.[serve]'" in err


@pytest.mark.parametrize("arguments, fragments", [
    (["--port", "70000"], ["--port 70000: must be a whole number between 0 and 65535"]),
    (["--port", "65536"], ["--port 65536: must be a whole number between 0 and 65535", "0 picks a free one"]),
    (["--port", "-1"], ["--port -1: must be a whole number between 0 and 65535"]),
    (["--port", "eighty"], ["--port: invalid int value: 'eighty'", "fmnist serve --help"]),
    (["--port", "80.5"], ["--port: invalid int value: '80.5'"]),
    (["--max-upload-mb", "0"], ["--max-upload-mb 0: must be more than 0"]),
    (["--max-batch", "0"], ["--max-batch 0: must be at least 1"]),
    # TEST-NET-1 is nobody's address: bind() fails at once (EADDRNOTAVAIL), no packet is sent.
    (["--host", "192.0.2.1", "--port", "0"], ["cannot listen on 192.0.2.1:0", "not an address of this machine",
                                              "use 127.0.0.1 (this machine only), 0.0.0.0 (every interface)"]),
    (["--host", "192.0.2.1", "--port", "-1"], ["--port -1: must be a whole number"]),
    (["--host", "no-such-host.invalid", "--port", "0"], ["--host no-such-host.invalid: not an address of this machine",
                                                         "use 127.0.0.1"]),
    (["--host", "a" * 300, "--port", "0"], ["not an address of this machine (not a valid host name)", "use 127.0.0.1"]),
    (["--host", "a..b", "--port", "0"], ["--host a..b: not an address of this machine"]),
    (["--host", "[::1]", "--port", "0"], ["--host [::1]: not an address of this machine"]),
], ids=["70000", "65536", "-1", "not-a-number", "fraction", "max-upload", "max-batch", "not-this-machine",
        "bad-host-and-port", "unresolvable", "name-too-long", "empty-label", "bracketed-ipv6"])
def test_bad_options_are_one_line_and_nothing_says_it_serves(tiny_run, arguments, fragments, capsys):
    assert main(["serve", str(tiny_run), *arguments]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert all(fragment in captured.err for fragment in fragments), captured.err
    assert len(captured.err) < 400, captured.err  # a host name of 300 characters is cut, the advice stays
    assert "serving" not in captured.out and "open http" not in captured.out, captured.out


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "a folder without checkpoints"])
def test_a_damaged_checkpoint_is_one_line_before_anything_listens(tiny_run, tmp_path, damage, capsys):
    target = tmp_path / "model.pt"
    whole = (tiny_run / "best.pt").read_bytes()
    if damage == "garbage":
        target.write_bytes(b"not a checkpoint at all")
    elif damage == "truncated":
        target.write_bytes(whole[: len(whole) // 2])
    elif damage == "empty":
        target.write_bytes(b"")
    else:
        target = tmp_path / "run"
        target.mkdir()
        (target / "config.json").write_text("{}")
    assert main(["serve", str(target), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("fmnist: error: ") and "Traceback" not in err, err


def test_a_missing_run_is_one_line(tmp_path, capsys):
    assert main(["serve", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such run folder or checkpoint" in err


def test_a_port_in_use_is_one_line(tiny_run, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert threading.current_thread() is threading.main_thread()
        assert main(["serve", str(tiny_run), "--port", str(port)]) == 2
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in captured.err
    assert "another --port" in captured.err and "Traceback" not in captured.err
    assert "serving" not in captured.out, captured.out  # before: "serving ...", then the error


PRIVILEGED_BIND = """
import encodings.idna, os  # idna: getaddrinfo loads it, and nobody may not read Python's own folder
from fmnist.errors import ConfigError
from fmnist.serve.server import listening_socket
if os.geteuid() == 0:
    os.setgid(65534)
    os.setuid(65534)  # nobody: the limit on ports below 1024 is for users other than root
try:
    listening_socket("127.0.0.1", 1)
except ConfigError as error:
    print(error)
"""


def test_a_privileged_port_says_which_ports_this_user_may_take():
    start = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")
    if start.exists() and int(start.read_text()) <= 1:
        pytest.skip("this machine lets every user listen on port 1 (net.ipv4.ip_unprivileged_port_start)")
    result = subprocess.run([sys.executable, "-c", PRIVILEGED_BIND], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout == ("cannot listen on 127.0.0.1:1 (Permission denied); ports below 1024 need root: "
                             "choose --port 1024 or above (0: a free one)\n")


def test_the_startup_lines_wait_until_uvicorn_serves_the_socket(model):
    sock = listening_socket("127.0.0.1", 0)
    seen = []

    def announce() -> None:
        seen.append([listener.is_serving() for listener in server.servers])
        server.should_exit = True

    server = AnnouncingServer(uvicorn.Config(create_app(model), log_config=None, lifespan="on"), announce)
    with sock:
        server.run(sockets=[sock])
    assert seen == [[True]]  # once, and when the listener already accepts connections


def test_the_address_shown_is_the_bound_one():
    for host, shown in [("127.0.0.1", "http://127.0.0.1:"), ("localhost", "http://127.0.0.1:"),
                        ("0", "http://127.0.0.1:"), ("", "http://127.0.0.1:"), ("::1", "http://[::1]:")]:
        try:
            sock = listening_socket(host, 0)
        except ConfigError:
            assert host == "::1", host  # a machine without IPv6
            continue
        with sock:
            url = address_to_open(sock)
            assert url.startswith(shown) and url == f"{shown}{sock.getsockname()[1]}/", (host, url)
            assert listens_everywhere(sock) == (host in ("0", ""))
