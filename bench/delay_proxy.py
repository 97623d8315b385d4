"""A TCP proxy that holds every answer back for a few milliseconds: latency without netem.

The kernel of these machines has no ``netem`` qdisc, so the benchmark adds latency
here, in front of each nginx: what the client sends goes on at once, and whatever the
server sends back waits ``--delay-ms`` before it is passed on. A PUT's answer comes
after nginx has the whole body, so the delay falls between the body and the answer and
never overlaps the body's transfer, as a slow disk or a far-away server would add it.

Cheap in CPU, so that it is the delay that is measured and not the proxy: the
request bodies are moved by ``splice(2)`` through a pipe (the bytes never enter
Python), and the answers, a few hundred bytes, by ``recv``/``sendall``. One thread per
direction per connection; the clients keep their connections alive, so there are few.

    python bench/delay_proxy.py --delay-ms 5 LISTEN_PORT=UPSTREAM_PORT [...]

It listens on 127.0.0.1 only, forwards to 127.0.0.1 only, prints ``ready`` once every
port listens, and runs until killed.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
import threading
import time

PIPE_BLOCK = 1 << 16


def _pump_requests(client: socket.socket, upstream: socket.socket) -> None:
    """Client to server, through a pipe, with no copy into Python."""
    read_end, write_end = os.pipe()
    try:
        while True:
            moved = os.splice(client.fileno(), write_end, PIPE_BLOCK)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(read_end, upstream.fileno(), moved)
    except OSError:
        pass
    finally:
        os.close(read_end)
        os.close(write_end)
        _shut(upstream)


def _pump_answers(upstream: socket.socket, client: socket.socket, delay: float) -> None:
    """Server to client, each read held back by ``delay``."""
    try:
        while True:
            chunk = upstream.recv(PIPE_BLOCK)
            if not chunk:
                break
            time.sleep(delay)
            client.sendall(chunk)
    except OSError:
        pass
    finally:
        _shut(client)


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


def _serve(listener: socket.socket, upstream_port: int, delay: float) -> None:
    while True:
        client, _ = listener.accept()
        upstream = socket.create_connection(("127.0.0.1", upstream_port))
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=_pump_requests, args=(client, upstream), daemon=True).start()
        threading.Thread(target=_pump_answers, args=(upstream, client, delay), daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--delay-ms", type=float, required=True)
    parser.add_argument("pairs", nargs="+", metavar="LISTEN=UPSTREAM")
    args = parser.parse_args(argv)
    delay = args.delay_ms / 1000
    for pair in args.pairs:
        listen, _, upstream = pair.partition("=")
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", int(listen)))
        listener.listen(128)
        threading.Thread(target=_serve, args=(listener, int(upstream), delay), daemon=True).start()
    print("ready", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        threading.Event().wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
