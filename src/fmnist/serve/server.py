"""Running the application with uvicorn: the listening socket, the startup line, a clean stop.

The socket is bound here, before uvicorn starts, so that a port in use, an address that is not this
machine's or a privileged port is one line (not uvicorn's log and exit code 3), and `--port 0` can
pick a free port. Nothing says "serving" before the port answers: the startup lines are logged once
uvicorn has started, from the socket's real address.

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
from collections.abc import Callable, Iterator

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from fmnist.errors import ConfigError

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
BACKLOG = 2048  # connections the kernel queues while all are busy: 200 clients at once fit
GRACEFUL_SECONDS = 30  # after a stop signal, requests in flight get this long to finish
MAX_PORT = 65535
PRIVILEGED_BELOW = 1024  # Linux's net.ipv4.ip_unprivileged_port_start, and every other Unix's fixed limit
HOST_ADVICE = "use 127.0.0.1 (this machine only), 0.0.0.0 (every interface) or an address this machine has"
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


def check_port(port: int) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= MAX_PORT:
        raise ConfigError(f"--port {port}: must be a whole number between 0 and {MAX_PORT} (0 picks a free one)")


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening, or a one-line ConfigError saying why not and what to do."""
    check_port(port)
    try:
        # "" is every interface to bind() but no name to getaddrinfo: None says the same to both.
        family, kind, protocol, _, address = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except (socket.gaierror, UnicodeError) as error:  # UnicodeError: a name label longer than DNS allows
        reason = error.strerror if isinstance(error, socket.gaierror) else "not a valid host name"
        raise ConfigError(f"--host {short(host)}: not an address of this machine ({reason}); {HOST_ADVICE}") from None
    sock = socket.socket(family, kind, protocol)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart at once on the same port
    try:
        sock.bind(address)
        sock.listen(BACKLOG)
    except OSError as error:
        sock.close()
        advice = bind_advice(error.errno, port)
        raise ConfigError(f"cannot listen on {short(host)}:{port} ({error.strerror}); {advice}") from None
    return sock


def short(host: str) -> str:
    """The --host text as an error line shows it: a name of hundreds of characters would hide the advice."""
    return host if len(host) <= 60 else host[:57] + "..."


def bind_advice(number: int | None, port: int) -> str:
    """What to do when bind() failed with this errno."""
    if number == errno.EADDRINUSE:
        return "choose another --port (0 picks a free one), or stop what is using it"
    if number == errno.EADDRNOTAVAIL:
        return f"that --host is not an address of this machine; {HOST_ADVICE}"
    if number == errno.EACCES and port < PRIVILEGED_BELOW:
        return f"ports below {PRIVILEGED_BELOW} need root: choose --port {PRIVILEGED_BELOW} or above (0: a free one)"
    return f"choose another --host or --port; {HOST_ADVICE}"


def address_to_open(sock: socket.socket) -> str:
    """The URL a browser on this machine opens: the bound address, or 127.0.0.1 for every interface."""
    bound, port = sock.getsockname()[:2]
    shown = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bound, bound)
    return f"http://[{shown}]:{port}/" if ":" in shown else f"http://{shown}:{port}/"


def listens_everywhere(sock: socket.socket) -> bool:
    # From the bound address, not the --host text: "0", "*" and "" all bind to every interface.
    return sock.getsockname()[0] in ("0.0.0.0", "::")


class AnnouncingServer(uvicorn.Server):
    """uvicorn's server that logs its startup lines once it accepts and answers connections, not before."""

    def __init__(self, config: uvicorn.Config, announce: Callable[[], None]):
        super().__init__(config)
        self.announce = announce

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and not self.should_exit:
            self.announce()


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


def run_server(app, sock: socket.socket, serving: str) -> int | None:
    """Serve `app` on the listening socket until Ctrl-C or SIGTERM; return the signal that stopped it.

    `serving` is the first startup line (what is served), logged with the address once uvicorn has started.
    """
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on", http=JsonErrorH11, ws="none",
                            timeout_graceful_shutdown=GRACEFUL_SECONDS, backlog=BACKLOG)

    def announce() -> None:
        logger.info("%s", serving)
        logger.info("open %s in a browser (the API: %sdocs); Ctrl-C stops", address_to_open(sock),
                    address_to_open(sock))
        if listens_everywhere(sock):
            logger.info("listening on every network interface: anyone who can reach this machine can use it")

    server = AnnouncingServer(config, announce)
    # Its warnings about malformed multipart bodies repeat what the 400 answer already told the client.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    uvicorn_log = logging.getLogger("uvicorn.error")
    if not any(isinstance(known, NoWebSocketAdvice) for known in uvicorn_log.filters):
        uvicorn_log.addFilter(NoWebSocketAdvice())
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
