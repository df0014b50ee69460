"""A loopback TCP proxy, run as its own process so a test can SIGKILL it and start it again on the same port.

`python tests/tcp_proxy.py LISTEN_PORT TARGET_PORT` forwards every connection to 127.0.0.1:TARGET_PORT. Standing
in front of a long-lived `moto_server`, it turns "the S3 endpoint restarted" into something a test can do without
losing the bucket's contents (moto keeps state in memory): killing the proxy drops every open connection and
refuses new ones, exactly what clients see from a restarting server, while the objects behind it survive.
"""

from __future__ import annotations

import socket
import sys
import threading


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(listen_port: int, target_port: int) -> None:
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
        for a, b in ((client, upstream), (upstream, client)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
