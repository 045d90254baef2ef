"""One forward pass for the images of all requests waiting at that moment.

On a CPU a forward pass over 8 images costs about twice a pass over one (fast-cnn-16: 0.54 ms for
one image, 0.14 ms per image in a batch of 8, one thread), so when many clients ask at once, every
image that arrived during one forward pass goes into the next. No request waits for company: a
lone request goes through at once, alone, and batches form only while the model is busy. With 32
clients this took the server's CPU time per request from about 2.0 to 1.4 ms (fast-cnn-16;
benchmarks/serve_load.py --compare-batching; docs/serve.md).

Forward passes run one at a time on their own thread, so they never compete with each other for
the cores (PyTorch already spreads one pass over them) and the event loop stays free to accept
and read requests meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager

import torch
from torch import nn

from fmnist.inference import class_probabilities

logger = logging.getLogger(__name__)

MAX_BATCH = 256  # images per forward pass; more gains nothing per image (0.39 ms at 128) and delays the first


class InferenceQueue:
    """`await queue.classify(images)`: class probabilities, computed together with other requests' images.

    Use it inside `async with queue.running():` on the event loop that serves the requests.
    `max_batch=1` turns batching off (one image per forward pass, still one pass at a time).
    """

    def __init__(self, model: nn.Module, max_batch: int = MAX_BATCH):
        self.model = model
        self.max_batch = max_batch
        self.pending: deque[tuple[torch.Tensor, asyncio.Future]] = deque()
        self.wakeup: asyncio.Event | None = None
        self.passes = 0  # forward passes and images so far, for the log and the tests
        self.images = 0

    async def classify(self, images: list[torch.Tensor]) -> list[list[float]]:
        """Softmax probabilities for uint8 (28, 28) images, in order."""
        if self.wakeup is None:
            raise RuntimeError("InferenceQueue.classify outside `async with queue.running()`")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in images]
        self.pending.extend(zip(images, futures, strict=True))
        self.wakeup.set()
        return list(await asyncio.gather(*futures))

    @asynccontextmanager
    async def running(self) -> AsyncIterator[InferenceQueue]:
        """Start the worker task and its thread; on exit stop them (after the requests in flight)."""
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fmnist-inference")
        self.wakeup = asyncio.Event()
        worker = asyncio.create_task(self.work(executor))
        try:
            yield self
        finally:
            worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await worker
            for _, future in self.pending:
                future.cancel()
            self.pending.clear()
            self.wakeup = None
            executor.shutdown(wait=True)
            logger.debug("inference: %d images in %d forward passes", self.images, self.passes)

    async def work(self, executor: ThreadPoolExecutor) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                batch = [self.pending.popleft() for _ in range(min(self.max_batch, len(self.pending)))]
                batch = [(image, future) for image, future in batch if not future.done()]  # a client gone
                if batch:
                    await self.forward(loop, executor, batch)

    async def forward(self, loop, executor: ThreadPoolExecutor, batch: list[tuple[torch.Tensor, asyncio.Future]]):
        futures = [future for _, future in batch]
        try:
            rows = await loop.run_in_executor(executor, class_probabilities, self.model, [image for image, _ in batch])
        except asyncio.CancelledError:
            for future in futures:
                future.cancel()
            raise
        except Exception as error:  # each waiting request gets the error; the worker goes on
            for future in futures:
                if not future.done():
                    future.set_exception(error)
            return
        self.passes += 1
        self.images += len(batch)
        for future, row in zip(futures, rows, strict=True):
            if not future.done():
                future.set_result(row)
