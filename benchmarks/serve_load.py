"""`fmnist serve` under load: requests/s, p50/p99 latency, and the server's memory over 5,000 requests.

    python benchmarks/serve_load.py RUN_DIR                      # batching on (the default)
    python benchmarks/serve_load.py RUN_DIR --compare-batching   # the same with --max-batch 1 too, in turns

It starts `fmnist serve RUN_DIR --port 0` as a child process (so its memory can be read from /proc)
and sends real Fashion-MNIST test images, one 28x28 PNG per request (multipart, as the page does),
from an asyncio client (httpx2) with 1, 8, 32 and 200 clients at once, each sending its next
request when its answer arrives. Every answer is checked: status 200 and ten probabilities.
Latency is per request, from sending to the parsed answer. Then 5,000 more requests at 200
clients, with the server's resident memory (RSS) read before, every 1,000 requests, and after.

The client runs on the same machine and takes CPU time itself (httpx2: about 1.5 ms per request),
so requests/s is the server's on the cores the client leaves: note the core count with it. The
server's CPU time per request (from /proc) is printed too: it says what batching saves even
where the client is the bottleneck. Run it on an idle machine.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx2
from PIL import Image

from fmnist.data.locate import find_data_dir
from fmnist.data.splits import read_split

LEVELS = (1, 8, 32, 200)
REQUESTS_PER_LEVEL = 2000
MEMORY_REQUESTS = 5000
IMAGES = 1000  # distinct test images, sent in turn


def test_images_as_png(count: int) -> list[bytes]:
    test = read_split(find_data_dir(), "test")
    images = []
    for image in test.images[:count]:
        buffer = io.BytesIO()
        Image.fromarray(image.numpy()).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


def start_server(run: str, max_batch: int | None) -> tuple[subprocess.Popen, str]:
    command = [sys.executable, "-m", "fmnist", "serve", run, "--port", "0"]
    if max_batch is not None:
        command += ["--max-batch", str(max_batch)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in server.stdout:
        found = re.search(r"open (http://\S+/) ", line)
        if found:
            # Keep reading what it prints, so that a full pipe never stalls it.
            threading.Thread(target=server.stdout.read, daemon=True).start()
            return server, found.group(1)
    raise SystemExit(f"the server did not start (exit code {server.wait()})")


def stop_server(server: subprocess.Popen) -> None:
    server.terminate()
    code = server.wait(timeout=60)
    if code != 0:
        print(f"warning: the server exited with code {code} after SIGTERM")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc")


async def load(url: str, images: list[bytes], clients: int, requests: int, on_progress=None) -> dict:
    """`requests` requests from `clients` concurrent clients; latencies in seconds, failures counted.

    Each client has its own httpx2.AsyncClient (one connection, kept alive), made before the clock
    starts: one client with a pool of 200 connections spends milliseconds per request in the pool.
    """
    latencies: list[float] = []
    failures: list[str] = []
    next_request = 0

    async def client(http: httpx2.AsyncClient) -> None:
        nonlocal next_request
        while next_request < requests:
            number = next_request
            next_request += 1
            started = time.perf_counter()
            try:
                response = await http.post("predict", files={"file": (f"{number}.png", images[number % len(images)])})
                answer = response.json()
                ok = response.status_code == 200 and len(answer[0]["probabilities"]) == 10
            except (httpx2.HTTPError, ValueError, KeyError) as error:
                ok, answer = False, repr(error)
            latencies.append(time.perf_counter() - started)
            if not ok:
                failures.append(str(answer)[:200])
            if on_progress is not None and (number + 1) % 1000 == 0:
                on_progress(number + 1)

    https = [httpx2.AsyncClient(base_url=url, timeout=120) for _ in range(clients)]
    try:
        cpu, started = time.process_time(), time.perf_counter()
        await asyncio.gather(*(client(http) for http in https))
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    finally:
        await asyncio.gather(*(http.aclose() for http in https))
    latencies.sort()
    return {
        "clients": clients, "requests": requests, "failures": len(failures), "first_failure": failures[:1],
        "requests_per_second": requests / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "client_cpu_ms": 1000 * cpu / requests,
    }


def measure(run: str, images: list[bytes], max_batch: int | None, requests: int, memory_requests: int) -> None:
    server, url = start_server(run, max_batch)
    label = "batching off (--max-batch 1)" if max_batch == 1 else f"--max-batch {max_batch or 'default (256)'}"
    try:
        asyncio.run(load(url, images, 8, 200))  # warm-up: connections, first passes, allocator
        print(f"\n{label}: {url}")
        print(f"  {'clients':>7} {'requests/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/req':>18} "
              f"{'client CPU ms/req':>18} {'failures':>9}")
        for clients in LEVELS:
            server_cpu = cpu_seconds(server.pid)
            result = asyncio.run(load(url, images, clients, requests))
            server_cpu = 1000 * (cpu_seconds(server.pid) - server_cpu) / requests
            print(f"  {clients:>7} {result['requests_per_second']:>11.0f} {result['p50_ms']:>8.1f} "
                  f"{result['p99_ms']:>8.1f} {server_cpu:>18.2f} {result['client_cpu_ms']:>18.2f} "
                  f"{result['failures']:>9}" +
                  (f"  first: {result['first_failure'][0]}" if result["failures"] else ""))
        if memory_requests:
            readings = [("before", rss_mb(server.pid))]
            asyncio.run(load(url, images, 200, memory_requests,
                             on_progress=lambda done: readings.append((str(done), rss_mb(server.pid)))))
            readings.append(("after", rss_mb(server.pid)))
            print(f"  server RSS over {memory_requests:,} requests at 200 clients (MB): " +
                  ", ".join(f"{name} {value:.1f}" for name, value in readings))
    finally:
        stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", metavar="RUN_DIR|CHECKPOINT")
    parser.add_argument("--requests", type=int, default=REQUESTS_PER_LEVEL, help="per concurrency level")
    parser.add_argument("--memory-requests", type=int, default=MEMORY_REQUESTS, help="0 skips the memory run")
    parser.add_argument("--max-batch", type=int, help="passed to fmnist serve")
    parser.add_argument("--compare-batching", action="store_true",
                        help="measure batching on and off (--max-batch 1), in turns, twice each")
    args = parser.parse_args()
    images = test_images_as_png(IMAGES)
    print(f"fmnist serve load: {args.run}, one {len(images[0])}-byte PNG per request, {os.cpu_count()} cores")
    if args.compare_batching:
        for _ in range(2):
            for max_batch in (None, 1):
                measure(args.run, images, max_batch, args.requests, 0)
    else:
        measure(args.run, images, args.max_batch, args.requests, args.memory_requests)


if __name__ == "__main__":
    main()
