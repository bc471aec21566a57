"""``--workers``: the worker processes' listening sockets (the processes themselves are
tested in test_web_server.py)."""

from __future__ import annotations

import select
import socket
import sys

import pytest

from notochord_rt.apps.web.serve import bind
from notochord_rt.apps.web.workers import worker_sockets


def test_without_reuse_port_the_workers_share_one_socket() -> None:
    sock = bind("127.0.0.1", 0)
    try:
        assert worker_sockets(sock, 3) == [sock, sock, sock]
        assert worker_sockets(sock, 1) == [sock]
    finally:
        sock.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SO_REUSEPORT balancing is "
                    "Linux's")
def test_each_worker_gets_its_own_socket_and_connections_are_spread() -> None:
    """With SO_REUSEPORT each worker listens on its own socket of the same port, and the
    kernel deals connections out over them (32 connections all landing on one of two
    sockets would happen with probability 2**-31 under its hash)."""
    sock = bind("127.0.0.1", 0, reuse_port=True)
    socks = worker_sockets(sock, 2)
    clients = []
    try:
        assert socks[0] is sock and socks[1] is not sock
        assert {s.getsockname() for s in socks} == {sock.getsockname()}
        for _ in range(32):
            clients.append(socket.create_connection(sock.getsockname()[:2], timeout=5))
        counts = [0, 0]
        for k, s in enumerate(socks):
            s.setblocking(False)
            while select.select([s], [], [], 0.5)[0]:
                conn, _ = s.accept()
                conn.close()
                counts[k] += 1
                if sum(counts) == 32:
                    break
        assert sum(counts) == 32
        assert min(counts) >= 1, counts
    finally:
        for c in clients:
            c.close()
        for s in socks:
            s.close()
