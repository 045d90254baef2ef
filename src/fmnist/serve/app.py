"""The web application of `fmnist serve`: the page, the JSON API, and its limits.

    GET  /          the page (page.html: one file, no external assets)
    POST /predict   images (multipart field `file`, once or several times, or the raw body) -> JSON
    GET  /model     model, recipe, test accuracy, per-class accuracy, confusion matrix, calibration, limits
    GET  /healthz   {"status": "ok", "images": ..., "forward_passes": ...}
    GET  /docs      FastAPI's generated OpenAPI page (Swagger UI from fastapi-offline's files: nothing
                    is loaded from another origin, so it works without internet)

An image goes the way `fmnist predict` takes a file (data/images.py, then inference.class_probabilities),
so the page, the API and the command line give the same probabilities for the same bytes. Every
error is a JSON object {"error": "one line"} with a 4xx status: a body above the size limit 413, a
request without an image or with a malformed multipart body 400, an image that cannot be read (not
an image, truncated, above the pixel cap, a mode that has no gray) 422, a method an endpoint does not
take 405 (with Allow). A client that hangs up before its whole body arrived is one line in the log.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from fmnist.data.fashion import CLASS_NAMES, NUM_CLASSES
from fmnist.data.images import IMAGE_FORMATS, MAX_PIXELS, read_image_bytes, to_fashion_mnist
from fmnist.errors import CheckpointError, DataError, FmnistError, one_line_reason
from fmnist.explain import INSTALL_EXTRA as EXPLAIN_EXTRA
from fmnist.explain import attribution_maps, captum_available
from fmnist.inference import Prediction, TrainedModel
from fmnist.runs.folder import recorded_test_accuracy, recorded_test_summary
from fmnist.serve.batching import MAX_BATCH, InferenceQueue
from fmnist.version import __version__

logger = logging.getLogger(__name__)

PAGE = Path(__file__).with_name("page.html")
MAX_UPLOAD_MB = 10.0
MAX_FILES = 100  # images per request: the page sends one; a script sending more can split them
RAW_BODY_NAME = "body"
# Uploads are decoded on threads, this many at once: a burst of 40-megapixel uploads then holds a
# few decoded images in memory (up to 160 MB each), not one per request.
DECODE_THREADS = min(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class ServeSettings:
    max_upload_bytes: int = int(MAX_UPLOAD_MB * 1_000_000)
    max_files: int = MAX_FILES
    max_batch: int = MAX_BATCH  # images per forward pass (1: no batching across requests)


class BodyTooLarge(Exception):
    def __init__(self, max_bytes: int):
        super().__init__(max_bytes)
        self.max_bytes = max_bytes


def model_card(model: TrainedModel, settings: ServeSettings) -> dict:
    """What GET /model answers: the model and how it was trained and tested, and the server's limits."""
    checkpoint = Path(model.info["checkpoint"])
    try:
        test_accuracy = recorded_test_accuracy(checkpoint, model.info["model"], model.info["epoch"])
        summary = recorded_test_summary(checkpoint, model.info["model"], model.info["epoch"])
    except CheckpointError as error:  # a damaged summary.json should not stop the model from being served
        logger.warning("no test accuracy to show: %s", error)
        test_accuracy, summary = None, {}
    return {
        "model": model.info["model"],
        "recipe": model.info["recipe"],
        "epoch": model.info["epoch"],
        "test_accuracy": test_accuracy,
        "run": checkpoint.parent.name,  # names only: the server's folders are nobody else's business
        "checkpoint": checkpoint.name,
        "classes": list(CLASS_NAMES),
        "normalization": {"mean": model.mean, "std": model.std},
        "flip_tta": model.flip_tta,
        "shift_tta": model.shift_tta,
        **weaknesses(summary),
        "calibration": served_calibration(model, summary),
        "explain": captum_available(),  # POST /predict?explain=true answers attribution maps
        "limits": {"max_upload_bytes": settings.max_upload_bytes, "max_files": settings.max_files,
                   "max_pixels": MAX_PIXELS, "formats": list(IMAGE_FORMATS)},
        "fmnist_version": __version__,
    }


def weaknesses(summary: dict) -> dict:
    """The test per-class accuracy and confusion matrix recorded for these weights (None when not recorded):
    which classes the model confuses, for a user to see before trusting an answer."""
    per_class = summary.get("test_per_class_accuracy")
    matrix = (summary.get("test_confusion_matrix") or {}).get("counts")
    fits = isinstance(per_class, list) and len(per_class) == NUM_CLASSES
    return {"per_class_accuracy": dict(zip(CLASS_NAMES, per_class, strict=True)) if fits else None,
            "confusion_matrix": {"rows": "true class", "columns": "predicted class", "counts": matrix}
            if isinstance(matrix, list) and len(matrix) == NUM_CLASSES else None}


def served_calibration(model: TrainedModel, summary: dict) -> dict:
    """The temperature applied to the answers (None: raw probabilities) and the test ECE recorded for it."""
    recorded = summary.get("calibration") if isinstance(summary.get("calibration"), dict) else {}
    measured = recorded.get("after") if model.temperature is not None else recorded.get("before")
    ece = measured.get("ece") if isinstance(measured, dict) else None
    return {"temperature": model.temperature, "test_ece": ece if isinstance(ece, (int, float)) else None}


def create_app(model: TrainedModel, settings: ServeSettings | None = None) -> FastAPI:
    """The application serving `model`; run it with uvicorn (server.py) or FastAPI's TestClient."""
    settings = settings or ServeSettings()
    card = model_card(model, settings)
    queue = InferenceQueue(model, settings.max_batch)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.decoders = anyio.CapacityLimiter(DECODE_THREADS)
        async with queue.running():
            yield

    # FastAPIOffline: FastAPI whose /docs and /redoc load their scripts from this server, not from a CDN.
    app = FastAPIOffline(title="fmnist serve", version=__version__, lifespan=lifespan,
                         description=f"A Fashion-MNIST classifier ({card['model']}): POST an image to /predict.",
                         swagger_ui_parameters={"validatorUrl": None})  # no badge fetched from swagger.io
    app.state.queue = queue
    app.state.card = card
    app.add_middleware(BodyLimit, max_bytes=settings.max_upload_bytes)
    add_error_handlers(app)

    page_html = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    @app.get("/model", summary="The model: name, recipe, test accuracy, classes, normalization, limits")
    async def get_model() -> dict:
        return card

    @app.get("/healthz", summary="Liveness, and the images classified so far in how many forward passes")
    async def healthz() -> dict:
        return {"status": "ok", "images": queue.images, "forward_passes": queue.passes}

    @app.post("/predict", summary="Classify images", openapi_extra=PREDICT_REQUEST_BODY)
    async def post_predict(
        request: Request,
        top_k: int = Query(3, ge=1, le=NUM_CLASSES, description="classes to list per image, most likely first"),
        invert: bool = Query(True, description="invert images on a light background (as `fmnist predict` does)"),
        explain: bool = Query(False, description="also answer `map`: the attribution map of the predicted class "
                                                 "(784 values in [0, 1], row by row; bright: changed the answer most)"),
    ) -> JSONResponse:
        """One entry per image, in order, as `fmnist predict --json` prints them, with `input`: the 28x28
        image the model saw (784 gray values, row by row), and with `explain=true` its `map`. With several
        images, one that cannot be read gets an `error` entry; a single image that cannot be read is a 422
        answer."""
        if explain and not captum_available():
            raise HTTPException(501, f"explain=true needs captum on the server; {EXPLAIN_EXTRA}")
        uploads = await read_uploads(request, settings)
        prepared = []
        for name, data in uploads:
            try:
                image = await anyio.to_thread.run_sync(prepare_image, data, name, invert,
                                                       limiter=request.app.state.decoders)
                prepared.append((name, image))
            except DataError as error:
                if len(uploads) == 1:
                    raise HTTPException(422, str(error)) from None
                prepared.append((name, error))
        readable = [image for _, image in prepared if isinstance(image, torch.Tensor)]
        classified = await queue.classify(readable) if readable else []
        maps = iter(await explain_maps(readable, classified) if explain and readable else [])
        rows = iter(classified)
        answers = []
        for name, image in prepared:
            if isinstance(image, DataError):
                answers.append(Prediction(name, error=str(image)).to_dict(top_k))
            else:
                answer = {**Prediction(name, next(rows)).to_dict(top_k), "input": image.flatten().tolist()}
                answers.append({**answer, "map": next(maps)} if explain else answer)
        return JSONResponse(answers)  # plain json.dumps: FastAPI's encoder walks the 784 values 8x slower

    async def explain_maps(images: list[torch.Tensor], rows: list[list[float]]) -> list[list[float]]:
        """The maps of the predicted classes, on a thread (gradients; the event loop keeps answering)."""
        labels = [max(range(len(row)), key=row.__getitem__) for row in rows]
        maps = await anyio.to_thread.run_sync(attribution_maps, model, torch.stack(images), labels)
        return [[round(float(value), 4) for value in attribution.flatten()] for attribution in maps]

    return app


def prepare_image(data: bytes, name: str, invert: bool) -> torch.Tensor:
    """An upload -> the uint8 (28, 28) image the model sees, as `fmnist predict` makes it from a file."""
    return to_fashion_mnist(read_image_bytes(data, name, IMAGE_FORMATS), invert)


async def read_uploads(request: Request, settings: ServeSettings) -> list[tuple[str, bytes]]:
    """(name, bytes) of each image sent: the multipart field `file` (repeatable), else the whole body."""
    if media_type(request) != "multipart/form-data":
        body = await request.body()
        if not body:
            raise HTTPException(400, "no image: send it as the request body or as the multipart field `file`")
        return [(RAW_BODY_NAME, body)]
    form = await read_form(request, settings)
    try:
        fields = form.multi_items()
        uploads = [(key, value) for key, value in fields if key == "file"]
        if not uploads:
            names = ", ".join(sorted({printable(key, 40) for key, _ in fields})) or "none"
            raise HTTPException(400, f"no multipart field `file` (fields sent: {names}); send the image as `file`")
        if any(not isinstance(value, UploadFile) for _, value in uploads):
            raise HTTPException(400, "the multipart field `file` holds text, not a file; send the image's bytes")
        return [(upload_name(upload, index), await upload.read()) for index, (_, upload) in enumerate(uploads)]
    finally:
        await form.close()


def media_type(request: Request) -> str:
    """The Content-Type without its parameters, as HTTP defines it: case and spaces do not count."""
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def read_form(request: Request, settings: ServeSettings):
    """The multipart form, or a 400 line saying what is wrong with it and what to send instead."""
    try:
        return await request.form(max_files=settings.max_files, max_fields=settings.max_files)
    except HTTPException as error:
        raise HTTPException(400, f"the multipart body cannot be read ({error.detail}); send each image as the "
                                 "multipart field `file`, or one image as the whole body") from None


def upload_name(upload: UploadFile, index: int) -> str:
    """The file name the client gave, without its folders (it goes into answers and errors)."""
    return printable((upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1], 100) or f"file {index + 1}"


def printable(text: str, length: int) -> str:
    """A client's text as one short line: no line breaks or terminal escapes reach an answer or the log."""
    return "".join(character for character in text if character.isprintable())[:length]


class BodyLimit:
    """ASGI middleware: a request body above `max_bytes` is answered 413 before it is all read.

    A declared Content-Length decides at once; a chunked body is counted as it arrives.
    """

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            logger.info("%s %s: 413 body above the limit", scope["method"], scope["path"])
            await too_large_response(self.max_bytes)(scope, receive, send)
            return
        received = 0

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise BodyTooLarge(self.max_bytes)
            return message

        await self.app(scope, counting_receive, send)


def too_large_response(max_bytes: int) -> JSONResponse:
    return JSONResponse({"error": f"the request body is larger than the server's limit of {max_bytes / 1e6:g} MB "
                                  "(fmnist serve --max-upload-mb); send a smaller image"}, status_code=413)


def add_error_handlers(app: FastAPI) -> None:
    """Every error as {"error": "one line"}: FastAPI's own (404, 405, 422 lists) and ours."""

    def answer(request: Request, status: int, message: str, headers=None) -> JSONResponse:
        if status >= 500:
            logger.error("%s %s: %d %s", request.method, request.url.path, status, message)
        else:
            logger.info("%s %s: %d %s", request.method, request.url.path, status, message)
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        return answer(request, error.status_code, http_error_line(request, error), error.headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        first = problems[0] if problems else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(part) for part in first.get("loc", ())[1:])
        return answer(request, 422, f"{where}: {first.get('msg')}" if where else str(first.get("msg")))

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, error: ClientDisconnect) -> JSONResponse:
        # The client's doing (a Content-Length promising more than it sent, then a hang-up): nobody
        # reads this answer, the log gets one line instead of uvicorn's traceback.
        return answer(request, 400, "the client closed the connection before sending the whole body "
                                    f"(Content-Length: {printable(request.headers.get('content-length', 'none'), 20)})")

    @app.exception_handler(BodyTooLarge)
    async def body_too_large(request: Request, error: BodyTooLarge) -> JSONResponse:
        logger.info("%s %s: 413 body above the limit", request.method, request.url.path)
        return too_large_response(error.max_bytes)

    @app.exception_handler(FmnistError)
    async def model_error(request: Request, error: FmnistError) -> JSONResponse:
        return answer(request, 500, str(error))  # the model's fault (say, NaN output), already one line

    @app.exception_handler(Exception)
    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        # A bug, not the client's doing: uvicorn logs it (`fmnist serve`: the error's type and message
        # in one line; a program that runs the app keeps uvicorn's traceback); the client gets one line.
        return JSONResponse({"error": f"internal error ({type(error).__name__}); the server's log has the details"},
                            status_code=500)


def http_error_line(request: Request, error: HTTPException) -> str:
    """Starlette's 404 and 405 say what and how to fix; the others are already ours (or multipart's)."""
    path = printable(request.url.path, 100)
    if error.status_code == 404:
        return f"no such page: {path} (the API: POST /predict, GET /model, GET /healthz; its description: GET /docs)"
    if error.status_code == 405:
        allowed = (error.headers or {}).get("Allow", "")
        return f"{printable(request.method, 20)} {path}: not allowed; {path} takes {allowed}"
    return one_line_reason(Exception(str(error.detail)))


# /docs shows an upload button for POST /predict: the request body is read by hand (to take either
# multipart or raw bytes, and to count them), so FastAPI cannot describe it on its own.
PREDICT_REQUEST_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": {
                    "file": {"type": "array", "items": {"type": "string", "format": "binary"},
                             "description": "one or several image files (PNG, JPEG, BMP, WebP, GIF)"}}},
            },
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}
