"""`fmnist serve`: a trained model behind a web page and a JSON API (FastAPI on uvicorn).

    from fmnist.serve import serve
    serve("runs/quick", port=8000)      # blocks; Ctrl-C or SIGTERM stops it

The page lets anyone drop an image or draw one and see what the model makes of it; the API
(`POST /predict`, `GET /model`, `GET /healthz`, `/docs`) gives the same in JSON. app.py is the
application, batching.py the forward passes shared by concurrent requests, server.py uvicorn and
the clean stop. It needs the optional extra: `pip install -e '.[serve]'`.
"""

from __future__ import annotations

import contextlib
import logging
import os

import torch

from fmnist.arguments import check_bool
from fmnist.data.fashion import IMAGE_SIZE
from fmnist.errors import ConfigError
from fmnist.inference import class_probabilities, load_model

logger = logging.getLogger(__name__)

INSTALL_EXTRA = ("pip install -e '.[serve]' in the fmnist checkout (fastapi, fastapi-offline, uvicorn, "
                 "python-multipart, captum)")


def require_serve_extra() -> None:
    try:
        import fastapi  # noqa: F401
        import fastapi_offline  # noqa: F401  (the /docs page's scripts, served locally)
        import python_multipart  # noqa: F401  (FastAPI reads uploads with it)
        import uvicorn  # noqa: F401
    except ImportError as error:
        raise ConfigError(f"fmnist serve: {error.name} is not installed; {INSTALL_EXTRA}") from None


def serve(source: str | os.PathLike, host: str = "127.0.0.1", port: int = 8000, max_upload_mb: float = 10.0,
          max_batch: int | None = None, device: str = "auto", calibrate: bool = True) -> int | None:
    """Serve the model of a run folder or checkpoint until Ctrl-C or SIGTERM; return that signal's number.

    `max_upload_mb` caps a request's body; `max_batch` the images per forward pass (1: no batching);
    `device` where the model runs (auto: CUDA, then MPS, then the CPU); `calibrate=False` serves raw
    probabilities instead of the run's temperature-scaled ones.
    """
    require_serve_extra()
    from fmnist.serve.app import ServeSettings, create_app
    from fmnist.serve.batching import MAX_BATCH
    from fmnist.serve.server import check_port, listening_socket, run_server

    check_port(port)
    if not max_upload_mb > 0:
        raise ConfigError(f"--max-upload-mb {max_upload_mb:g}: must be more than 0")
    if max_batch is not None and max_batch < 1:
        raise ConfigError(f"--max-batch {max_batch}: must be at least 1")
    check_bool(calibrate, "calibrate", "serve")
    model = load_model(source, device, calibrate)
    # A model whose weights went NaN would answer every request with an error: say so now, once.
    class_probabilities(model, [torch.zeros(IMAGE_SIZE, IMAGE_SIZE, dtype=torch.uint8)])
    settings = ServeSettings(max_upload_bytes=int(max_upload_mb * 1_000_000), max_batch=max_batch or MAX_BATCH)
    app = create_app(model, settings)
    card = app.state.card
    accuracy = f"test accuracy {card['test_accuracy']:.4f}" if card["test_accuracy"] is not None else \
        "no recorded test accuracy"
    serving = f"serving {model.info['checkpoint']}: {card['model']}, recipe {card['recipe'] or 'none'}, " \
              f"epoch {card['epoch']}, {accuracy}, on {next(model.parameters()).device}"
    # Bound after the model loaded (a damaged checkpoint is one line before anything listens); the
    # serving line comes once the port answers.
    with contextlib.closing(listening_socket(host, port)) as sock:
        return run_server(app, sock, serving)
