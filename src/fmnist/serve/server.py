"""Running the application with uvicorn: the listening socket, the startup line, a clean stop.

The socket is bound here, before uvicorn starts, so that a port in use is one line (not uvicorn's
log and exit code 3), `--port 0` can pick a free port, and the startup line names the real address.

A request uvicorn cannot parse (a malformed request line or header, bytes beyond the Content-Length
it declared) is answered as the application answers errors: 400 and one JSON line (JsonErrorH11).

Ctrl-C and SIGTERM: uvicorn stops accepting, finishes the requests in flight, shuts the
application down (the inference thread), and then raises the signal again so that the process
dies of it. A server that stopped as asked has done its job, so here that second raise meets a
handler that does nothing, and `fmnist serve` returns normally: exit code 0.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import signal
import socket
import threading
from collections.abc import Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fmnist.errors import ConfigError

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BACKLOG = 2048  # connections the kernel queues while all are busy: 200 clients at once fit
GRACEFUL_SECONDS = 30  # after a stop signal, requests in flight get this long to finish
ANY_ADDRESS = ("0.0.0.0", "::", "")
NOT_HTTP = ("not a valid HTTP/1.1 request (a malformed request line or header, or more bytes than its "
            "Content-Length said); send one request per Content-Length")


class JsonErrorH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol (h11, always: the same answers whether httptools is installed or
    not), whose answer to a request it cannot parse is fmnist's JSON line, not uvicorn's plain text."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps({"error": NOT_HTTP}, separators=(",", ":")).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                   (b"connection", b"close")]
        for event in (h11.Response(status_code=400, headers=headers, reason=b"Bad Request"), h11.Data(data=body),
                      h11.EndOfMessage()):
            self.transport.write(self.conn.send(event))
        self.transport.close()


class NoWebSocketAdvice(logging.Filter):
    """uvicorn advises installing a WebSocket library when a client asks to upgrade: this server has
    no WebSocket endpoint, so its own one line ("Unsupported upgrade request.") says enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No supported WebSocket library")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening, or a one-line ConfigError saying why not."""
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as error:
        raise ConfigError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once on the same port
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        in_use = error.errno == errno.EADDRINUSE
        hint = "choose another --port, or stop what is using it" if in_use else "choose another --host or --port"
        raise ConfigError(f"cannot listen on {host}:{port} ({error.strerror}); {hint}") from None
    return sock


def address_to_open(host: str, sock: socket.socket) -> str:
    port = sock.getsockname()[1]
    shown = "127.0.0.1" if host in ANY_ADDRESS else host
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


@contextlib.contextmanager
def stop_signals_end_quietly() -> Iterator[list[int]]:
    """While the server runs, uvicorn's own handlers take SIGINT and SIGTERM; these are the ones it
    restores and re-raises into afterwards: they note the signal and let `serve` return."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():  # no signals to handle off the main thread
        yield received
        return
    previous = {number: signal.signal(number, lambda number, frame: received.append(number))
                for number in STOP_SIGNALS}
    try:
        yield received
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def run_server(app, host: str, port: int) -> int | None:
    """Serve `app` on host:port until Ctrl-C or SIGTERM; return the signal that stopped it."""
    sock = listening_socket(host, port)
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", http=JsonErrorH11, ws="none",
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, backlog=BACKLOG)
    server = uvicorn.Server(config)
    # Its warnings about malformed multipart bodies repeat what the 400 answer already told the client.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(known, NoWebSocketAdvice) for known in uvicorn_log.filters):
        uvicorn_log.addFilter(NoWebSocketAdvice())
    logger.info("open %s in a browser (the API: %sdocs); Ctrl-C stops", address_to_open(host, sock),
                address_to_open(host, sock))
    if host in ANY_ADDRESS:
        logger.info("listening on every network interface (--host %s): anyone who can reach this machine can use it",
                    host or "''")
    with stop_signals_end_quietly() as received:
        try:
            server.run(sockets=[sock])
        finally:
            sock.close()
    stopped_by = received[-1] if received else None
    if server.force_exit:
        logger.warning("stopped at once (a second Ctrl-C): requests in flight were cut off")
    elif stopped_by is not None:
        logger.info("stopped (%s) after the requests in flight", signal.Signals(stopped_by).name)
    return stopped_by
