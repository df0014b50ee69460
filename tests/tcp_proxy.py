"""A loopback TCP proxy, run as its own process so a test can SIGKILL it and start it again on the same port.

`python tests/tcp_proxy.py LISTEN_PORT TARGET_PORT [DIE_AFTER]` forwards every connection to 127.0.0.1:TARGET_PORT;
with DIE_AFTER, the process exits at once (as if SIGKILLed) when it has sent that many bytes back to clients, so a
test can cut a response at a known point mid-body. Standing in front of a long-lived `moto_server`, it turns "the
S3 endpoint restarted" into something a test can do without losing the bucket's contents (moto keeps state in
memory): killing the proxy drops every open connection and refuses new ones, exactly what clients see from a
restarting server, while the objects behind it survive.
"""

from __future__ import annotations

import os
import socket
import sys
import threading


class _Budget:
    """Bytes the proxy may still send back to clients before it dies (None: no limit)."""

    def __init__(self, limit: int | None) -> None:
        self.left, self.lock = limit, threading.Lock()

    def spend(self, n: int) -> None:
        if self.left is None:
            return
        with self.lock:
            self.left -= n
            if self.left <= 0:
                os._exit(1)  # no cleanup, like a crash: the kernel closes every socket


def _pipe(src: socket.socket, dst: socket.socket, budget: _Budget | None = None) -> None:
    try:
        while data := src.recv(65536):
            if budget is not None:
                budget.spend(len(data))
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listen_port: int, target_port: int, die_after: int | None = None) -> None:
    budget = _Budget(die_after)
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebinding right after a SIGKILL must work
    server.bind(("127.0.0.1", listen_port))
    server.listen(128)
    print("ready", flush=True)
    while True:
        client, _ = server.accept()
        try:
            upstream = socket.create_connection(("127.0.0.1", target_port))
        except OSError:
            client.close()
            continue
        for a, b, spend in ((client, upstream, None), (upstream, client, budget)):
            threading.Thread(target=_pipe, args=(a, b, spend), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else None)
