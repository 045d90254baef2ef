"""`fmnist serve` as a user runs it: a child process on a free port, a real browser, many clients, signals.

One model is trained on the real data for the module (the quick recipe, 60 batches of one epoch,
about 15 s and 0.79 test accuracy on 2 cores), and one server serves it for the browser, load and
memory tests; the signal tests start their own. The browser is Debian's `chromium` package driven
by Python's playwright (never `playwright install`, whose downloads fail offline): make test
installs it with apt when run as root.

Set FMNIST_SCREENSHOT=docs/serve.png to keep the screenshot the browser test takes (docs/serve.md
shows it); otherwise it goes to the test's temporary folder.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import queue
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import fmnist_process, one_line, train_tiny_run
from fmnist.cli import main
from fmnist.data.fashion import CLASS_NAMES
from fmnist.data.images import read_image, to_fashion_mnist
from fmnist.data.locate import find_data_dir
from fmnist.data.splits import read_split
from fmnist.experiment import train
from fmnist.inference import class_probabilities, load_model
from fmnist.runs.folder import read_summary
from fmnist.training.config import TrainConfig

try:
    import httpx2

    from fmnist.serve.app import prepare_image
except ImportError as error:
    pytest.fail(f"{error.name} is missing: the serve tests need `pip install -e '.[serve,dev]'` "
                "(make test installs it)", pytrace=False)

CHROMIUM_FLAGS = ["--disable-gpu", "--no-first-run", "--disable-background-networking", "--disable-component-update",
                  "--disable-sync", "--disable-dev-shm-usage"]  # nothing that reaches for the network
STARTUP_SECONDS = 90


class ServerProcess:
    """`python -m fmnist serve RUN --port 0`, its address read from the startup line, its output kept."""

    def __init__(self, run: Path, *options: str):
        self.process = subprocess.Popen([sys.executable, "-m", "fmnist", "serve", str(run), "--port", "0", *options],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        self.url = self.wait_for(r"open (http://127\.0\.0\.1:\d+/) in a browser").group(1)

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line)
        self.lines.put("")  # end of output

    def wait_for(self, pattern: str, timeout: float = STARTUP_SECONDS) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            self.output.append(line)
            if line == "":
                pytest.fail(f"fmnist serve ended (code {self.process.wait()}): {''.join(self.output)}")
            found = re.search(pattern, line)
            if found:
                return found
        pytest.fail(f"fmnist serve printed no line matching {pattern!r} in {timeout} s: {''.join(self.output)}")

    def stop(self, signal_number: int = signal.SIGTERM) -> int:
        """Send the signal (if it still runs) and return the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal_number)
        try:
            return self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise

    def rest_of_output(self) -> str:
        """Everything it printed, once it has ended."""
        while (line := self.lines.get(timeout=60)) != "":
            self.output.append(line)
        return "".join(self.output)

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    try:
        data_dir = find_data_dir()
    except Exception:
        pytest.fail("the real Fashion-MNIST is needed: run `make test`, or `fmnist data ensure` first")
    config = TrainConfig.from_recipe("quick", epochs=1, limit_batches=60, device="cpu", data_dir=str(data_dir),
                                    out=str(tmp_path_factory.mktemp("runs")), name="serve")
    return train(config).path


@pytest.fixture(scope="module")
def test_images(real_run) -> tuple[torch.Tensor, torch.Tensor]:
    test = read_split(find_data_dir(), "test")
    return test.images[:400], test.labels[:400]


@pytest.fixture(scope="module")
def server(real_run):
    server = ServerProcess(real_run)
    yield server
    server.stop()


def png(image: torch.Tensor | np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.asarray(image)).save(buffer, format="PNG")
    return buffer.getvalue()


# --- the page in a real browser -------------------------------------------------------------------


@pytest.fixture
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("playwright is missing: pip install -e '.[dev]' (make test installs it)", pytrace=False)
    executable = shutil.which("chromium") or shutil.which("chromium-browser")
    if executable is None:
        pytest.fail("the browser test needs Debian's chromium: `sudo apt-get install chromium` (make test does "
                    "this when run as root); never `playwright install`", pytrace=False)
    flags = CHROMIUM_FLAGS + (["--no-sandbox"] if os.geteuid() == 0 else [])  # root cannot use the sandbox
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, headless=True, args=flags)
        yield browser
        browser.close()


def confident_image(model, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The first test image the model gets right with probability above 0.95, a shoe or a bag if it can."""
    probabilities = torch.tensor(class_probabilities(model, list(images)))
    right = (probabilities.argmax(1) == labels) & (probabilities.max(1).values > 0.95)
    for wanted in (9, 7, 8, 5, 1):  # Ankle boot, Sneaker, Bag, Sandal, Trouser: recognizable in a screenshot
        chosen = (right & (labels == wanted)).nonzero()
        if len(chosen):
            return images[chosen[0, 0]]
    assert right.any(), "the quickly trained model should be sure of some of 400 test images"
    return images[right.nonzero()[0, 0]]


def shown(page) -> dict:
    """What the page shows: top class, source line, the ten probabilities, the 28x28 preview, the error line."""
    return page.evaluate("""() => ({
        top: document.getElementById("top-class").textContent,
        source: document.getElementById("source").textContent,
        probabilities: Object.fromEntries([...document.querySelectorAll("#bars .value")]
            .map((element) => [element.dataset.class, Number(element.dataset.probability)])),
        preview: Array.from(document.getElementById("input-preview").getContext("2d")
            .getImageData(0, 0, 28, 28).data.filter((_, index) => index % 4 === 0)),
        error: document.getElementById("error").textContent,
    })""")


def upload(page, path: Path) -> dict:
    page.set_input_files("#file-input", str(path))
    page.wait_for_function("(name) => document.getElementById('source').textContent.startsWith(name + ' ')",
                           arg=path.name)
    return shown(page)


def test_the_page_in_a_real_browser(server, real_run, test_images, browser, tmp_path, capsys):
    model = load_model(real_run)
    image = confident_image(model, *test_images)
    png_path, jpeg_path, text_path = tmp_path / "item.png", tmp_path / "item-on-white.jpg", tmp_path / "notes.txt"
    png_path.write_bytes(png(image))
    on_white = Image.fromarray(255 - image.numpy()).resize((112, 112), Image.Resampling.BICUBIC)
    on_white.save(jpeg_path, quality=95)
    text_path.write_text("not a picture\n")
    assert main(["predict", str(real_run), str(png_path), str(jpeg_path), "--json"]) == 0
    answers = json.loads(capsys.readouterr().out)
    expected = {Path(entry["file"]).name: entry["predictions"][0]["class"] for entry in answers}

    page = browser.new_page(viewport={"width": 980, "height": 640})
    requested, page_errors = [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.goto(server.url)
    page.wait_for_function("document.getElementById('model-name').textContent !== '…'")
    summary = read_summary(real_run)
    assert page.inner_text("#model-name") == "fast-cnn-16" and page.inner_text("#model-recipe") == "quick"
    assert page.inner_text("#model-accuracy") == f"{100 * summary['test_accuracy']:.2f}%"

    # The test image as a PNG: the top class of `fmnist predict`, and the very pixels it fed the model.
    result = upload(page, png_path)
    assert result["top"] == expected["item.png"] and not result["error"]
    assert result["preview"] == image.flatten().tolist()
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    # Its attribution map, drawn beside it: the map the API answers, blended over the input.
    page.wait_for_function("Array.from(document.getElementById('input-map').getContext('2d')"
                           ".getImageData(0, 0, 28, 28).data).some((value, index) => index % 4 === 0 && value > 0)")
    drawn = np.array(page.evaluate("Array.from(document.getElementById('input-map').getContext('2d')"
                                   ".getImageData(0, 0, 28, 28).data)")).reshape(28, 28, 4)
    from fmnist.explain import attribution_maps

    wanted = attribution_maps(model, image.unsqueeze(0))[0]
    red = 0.4 * image.numpy() + 0.6 * 255 * np.minimum(1, 3 * wanted)
    assert np.abs(drawn[..., 0] - np.minimum(255, red)).max() <= 2
    # Where the model is weak: the run's per-class accuracy and confusion matrix, as /model and summary.json.
    weak = page.evaluate("""() => ({
        classes: [...document.querySelectorAll("#class-accuracy .name")].map((element) => element.textContent),
        accuracies: [...document.querySelectorAll("#class-accuracy .value")].map((element) => element.textContent),
        matrix: [...document.querySelectorAll("#confusion tr")].slice(1)
            .map((row) => [...row.querySelectorAll("td")].map((cell) => Number(cell.textContent))),
        calibration: document.getElementById("model-calibration").textContent,
    })""")
    assert weak["classes"] == list(CLASS_NAMES)
    assert weak["accuracies"] == [f"{100 * value:.1f}%" for value in summary["test_per_class_accuracy"]]
    assert weak["matrix"] == summary["test_confusion_matrix"]["counts"]
    assert weak["calibration"] == (f"calibrated (temperature {summary['calibration']['temperature']:.2f}), "
                                   f"test ECE {summary['test_ece_calibrated']:.4f}")
    assert page.locator("#weak").is_visible() and page.locator("#input-map").is_visible()
    screenshot = tmp_path / "serve.png"
    page.screenshot(path=str(screenshot), full_page=True)
    if os.environ.get("FMNIST_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["FMNIST_SCREENSHOT"])

    # The same item dark on white as a JPEG: inverted back to light on black, as `fmnist predict` does.
    result = upload(page, jpeg_path)
    assert result["top"] == expected["item-on-white.jpg"] == expected["item.png"]
    assert result["preview"] == to_fashion_mnist(read_image(jpeg_path)).flatten().tolist()

    # A stroke on the canvas: ten probabilities that sum to 1, for "drawing.png".
    box = page.locator("#canvas").bounding_box()
    page.mouse.move(box["x"] + 80, box["y"] + 60)
    page.mouse.down()
    for step in range(1, 11):
        page.mouse.move(box["x"] + 80 + 12 * step, box["y"] + 60 + 16 * step)
    page.mouse.up()
    page.wait_for_function("document.getElementById('source').textContent.startsWith('drawing.png ')")
    result = shown(page)
    assert set(result["probabilities"]) == set(CLASS_NAMES)
    assert sum(result["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)
    assert max(result["preview"]) > 200 and result["preview"][0] == 0  # light stroke on black, as sent

    # A text file: the server's one-line reason on the page.
    page.set_input_files("#file-input", str(text_path))
    page.wait_for_function("document.getElementById('error').textContent !== ''")
    error = page.inner_text("#error")
    assert error == "notes.txt: not an image Pillow can read (PNG, JPEG, BMP, WebP or GIF)"
    assert page.locator("#error").is_visible()

    assert not page_errors
    assert all(url.startswith(server.url) for url in requested), requested  # no external assets: works offline
    page.close()


def test_the_docs_page_in_a_real_browser_requests_nothing_from_another_origin(server, browser):
    page = browser.new_page()
    requested, page_errors = [], []
    page.on("request", lambda request: requested.append(request.url))
    page.on("pageerror", lambda error: page_errors.append(str(error)))
    page.goto(server.url + "docs")
    page.wait_for_selector(".opblock-summary-path", timeout=30_000)  # Swagger UI rendered the operations
    paths = page.eval_on_selector_all(".opblock-summary-path", "elements => elements.map(e => e.textContent)")
    assert {"/predict", "/model", "/healthz"} <= {path.replace("\u200b", "") for path in paths}
    assert not page_errors
    assert requested and all(url.startswith(server.url) for url in requested), requested
    page.close()


# --- load and memory -------------------------------------------------------------------------------


async def send_all(url: str, bodies: list[bytes], clients: int, per_client: int) -> list[tuple[int, int, dict]]:
    """Each of `clients` clients (its own connection) sends `per_client` images in turn; (index, status, answer)."""
    context = ssl.create_default_context()  # one for all: httpx2 would build one per client otherwise
    answers = []
    start = asyncio.Event()

    async def client(number: int, http: httpx2.AsyncClient) -> None:
        await start.wait()
        for turn in range(per_client):
            index = (number * per_client + turn) % len(bodies)
            response = await http.post("predict", files={"file": (f"{index}.png", bodies[index])})
            answers.append((index, response.status_code, response.json()))

    https = [httpx2.AsyncClient(base_url=url, verify=context, timeout=120) for _ in range(clients)]
    try:
        tasks = [asyncio.create_task(client(number, http)) for number, http in enumerate(https)]
        start.set()
        await asyncio.gather(*tasks)
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    return answers


def run_in_a_thread(coroutine):
    """asyncio.run, on a thread of its own: playwright's sync API may hold this thread's event loop."""
    results = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(coroutine)))
    thread.start()
    thread.join()
    assert results, "the clients failed (see the exception above)"
    return results[0]


def test_200_concurrent_clients_each_get_their_own_answer(server, real_run, test_images):
    model = load_model(real_run)
    images, _ = test_images
    bodies = [png(image) for image in images]
    expected = class_probabilities(model, [prepare_image(body, "x", True) for body in bodies])
    before = httpx2.get(server.url + "healthz").json()
    answers = run_in_a_thread(send_all(server.url, bodies, clients=200, per_client=2))
    assert len(answers) == 400
    for index, status, answer in answers:
        assert status == 200, answer
        probabilities = list(answer[0]["probabilities"].values())
        assert answer[0]["file"] == f"{index}.png"
        assert probabilities == pytest.approx(expected[index], abs=1e-4)  # batch size may change the last digits
        assert answer[0]["predictions"][0]["label"] == int(np.argmax(expected[index]))
    after = httpx2.get(server.url + "healthz").json()
    assert after["images"] - before["images"] == 400
    assert after["forward_passes"] - before["forward_passes"] < 400  # requests that arrived together were batched


def test_memory_stays_flat_over_many_requests(server, test_images):
    bodies = [png(image) for image in test_images[0]]
    run_in_a_thread(send_all(server.url, bodies, clients=20, per_client=20))  # warm-up: allocator, batch shapes
    before = server.rss_mb()
    for _ in range(2):
        answers = run_in_a_thread(send_all(server.url, bodies, clients=20, per_client=20))
        assert all(status == 200 for _, status, _ in answers)
    growth = server.rss_mb() - before
    # Measured: 0.3 to 1.8 MB over 1,200 requests. A leak of 10 kB per request (an upload, or an
    # answer with its 784 values, kept) would show 8 MB here.
    assert growth < 8, f"the server's memory grew by {growth:.1f} MB over 800 requests"


# --- stopping ----------------------------------------------------------------------------------------


def read_response(connection: socket.socket) -> tuple[bytes, bytes]:
    """An HTTP/1.1 response's head and its Content-Length bytes of content."""
    response = b""
    while True:
        head, separator, content = response.partition(b"\r\n\r\n")
        if separator:
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            if len(content) >= length:
                return head, content
        chunk = connection.recv(65536)
        assert chunk, f"the connection closed before the whole answer: {response!r}"
        response += chunk


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_a_stop_signal_finishes_the_request_in_flight_then_exits_0(real_run, test_images, signal_number):
    server = ServerProcess(real_run)
    body = png(test_images[0][0])
    port = int(server.url.rsplit(":", 1)[1].strip("/"))
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: test\r\nContent-Type: image/png\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
        # Once another connection is answered, the server has read this one's head (it came first)
        # and waits for the rest of its body: a request in flight.
        assert httpx2.get(server.url + "healthz").status_code == 200
        server.process.send_signal(signal_number)
        time.sleep(0.5)
        assert server.process.poll() is None, "the server quit with a request in flight"
        connection.sendall(body[100:])
        head, content = read_response(connection)
    assert head.startswith(b"HTTP/1.1 200"), head
    assert len(json.loads(content)[0]["probabilities"]) == 10
    # Already stopping: wait for it. (Before: stop() sent a second signal whenever the server had not
    # exited yet, as on a loaded machine, and a second signal cuts the exit short.)
    assert server.process.wait(timeout=60) == 0
    name = "SIGTERM" if signal_number == signal.SIGTERM else "SIGINT"
    output = server.rest_of_output()  # to its end: no deadline for a line that is already written
    assert f"stopped ({name}) after the requests in flight" in output and "Traceback" not in output, output


# --- what a careless or hostile client sends: a real uvicorn, a tiny model ---------------------------


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    return train_tiny_run(root, "tiny", limit_batches=2)


@pytest.fixture(scope="module")
def tiny_server(tiny_run):
    server = ServerProcess(tiny_run)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.rest_of_output()  # nothing below was worth one: uvicorn's included


def port_of(server: ServerProcess) -> int:
    return int(server.url.rsplit(":", 1)[1].strip("/"))


def exchange(server: ServerProcess, data: bytes) -> bytes:
    """Send raw bytes, read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port_of(server)), timeout=30) as connection:
        connection.sendall(data)
        received = b""
        while chunk := connection.recv(65536):
            received += chunk
    return received


def json_line(response: bytes, status: int) -> str:
    head, _, content = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d" % status) and b"content-type: application/json" in head.lower(), response
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
    message = json.loads(content[:length])["error"]
    assert "\n" not in message
    return message


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: many\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nbad header line\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
], ids=["request-line", "content-length", "header", "two-lengths"])
def test_a_request_uvicorn_cannot_parse_is_a_json_line(tiny_server, request_bytes):
    # before: uvicorn's text/plain "Invalid HTTP request received."
    assert "not a valid HTTP/1.1 request" in json_line(exchange(tiny_server, request_bytes), 400)
    assert httpx2.get(tiny_server.url + "healthz").status_code == 200


def test_a_content_length_that_lies_is_answered_not_a_traceback(tiny_server):
    image = png(np.zeros((28, 28), dtype=np.uint8))
    # Fewer bytes declared than sent: the image is cut at the declared length, the rest is not HTTP.
    answer = exchange(tiny_server, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n" + image)
    assert b"cannot decode the image" in answer or b"not an image" in answer
    assert b"not a valid HTTP/1.1 request" in answer
    # More declared than sent, then the client hangs up: one line in the server's log (before: a traceback).
    with socket.create_connection(("127.0.0.1", port_of(tiny_server)), timeout=30) as connection:
        connection.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + image[:50])
        assert httpx2.get(tiny_server.url + "healthz").status_code == 200  # the head is read
    tiny_server.wait_for(r"400 the client closed the connection before sending the whole body", timeout=30)
    assert httpx2.get(tiny_server.url + "healthz").status_code == 200


def test_a_websocket_upgrade_is_one_log_line_and_a_plain_answer(tiny_server):
    answer = exchange(tiny_server, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: Upgrade, close\r\n"
                                   b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n"
                                   b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 200")
    tiny_server.wait_for(r"Unsupported upgrade request", timeout=30)


def test_the_startup_lines_name_the_port_that_answers_and_a_second_server_there_is_one_line(tiny_server, tiny_run):
    serving, opening = tiny_server.output[:2]  # what --port 0 printed first
    port = port_of(tiny_server)
    assert serving.startswith(f"serving {tiny_run / 'best.pt'}: ") and port != 0
    assert opening.startswith(f"open http://127.0.0.1:{port}/ in a browser")
    assert httpx2.get(tiny_server.url + "healthz").status_code == 200
    second = fmnist_process(["serve", str(tiny_run), "--port", str(port)], timeout=120)
    assert f"cannot listen on 127.0.0.1:{port} (Address already in use)" in one_line(second)
    assert second.stdout == ""  # before: "serving ...", and then the error


def test_sigterm_under_load_answers_every_request_in_flight(tiny_run):
    server = ServerProcess(tiny_run)
    bodies = [png(np.full((28, 28), 20 * index, dtype=np.uint8)) for index in range(12)]
    connections = [socket.create_connection(("127.0.0.1", port_of(server)), timeout=60) for _ in bodies]
    try:
        for connection, body in zip(connections, bodies, strict=True):
            connection.sendall(b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: image/png\r\n"
                               b"Content-Length: %d\r\n\r\n" % len(body) + body[:100])
        assert httpx2.get(server.url + "healthz").status_code == 200  # all twelve heads are read by now
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert server.process.poll() is None, "the server quit with requests in flight"
        for connection, body in zip(connections, bodies, strict=True):
            connection.sendall(body[100:])
        answers = [read_response(connection) for connection in connections]
    finally:
        for connection in connections:
            connection.close()
    assert all(head.startswith(b"HTTP/1.1 200") for head, _ in answers), [head for head, _ in answers]
    assert all(len(json.loads(content)[0]["probabilities"]) == 10 for _, content in answers)
    code = server.process.wait(timeout=60)  # already stopping: a second SIGTERM would cut its exit short
    assert code == 0 and "Traceback" not in server.rest_of_output(), server.rest_of_output()
