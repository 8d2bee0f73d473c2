"""Stdlib-only helpers for scripts/services (no third-party imports: runs before any venv).

probe.py free-port PREFERRED      print PREFERRED if it can be bound on 127.0.0.1, else a free port
probe.py kafka-ready HOST:PORT    exit 0 once the broker answers a Metadata request listing itself
"""

from __future__ import annotations

import socket
import struct
import sys


def free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            # as servers bind: connections of an earlier run in TIME_WAIT do not block the port
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise SystemExit("no free port on 127.0.0.1")


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("connection closed")
        buf += chunk
    return buf


def kafka_ready(address: str) -> bool:
    """Send a Metadata v4 request (no topics) and check that the broker lists at least itself."""
    host, _, port = address.rpartition(":")
    client = b"tideflow-probe"
    # header v1: api_key=3 (Metadata), api_version=4, correlation_id, client_id
    header = struct.pack(">hhih", 3, 4, 7, len(client)) + client
    body = struct.pack(">i?", 0, False)  # topics: empty array; allow_auto_topic_creation: false
    req = header + body
    try:
        with socket.create_connection((host, int(port)), timeout=2) as s:
            s.settimeout(5)
            s.sendall(struct.pack(">i", len(req)) + req)
            (size,) = struct.unpack(">i", _recv_exact(s, 4))
            resp = _recv_exact(s, size)
    except OSError:
        return False
    corr, _throttle, nbrokers = struct.unpack(">iii", resp[:12])
    return corr == 7 and nbrokers >= 1


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "free-port":
        print(free_port(int(argv[1])))
        return 0
    if len(argv) == 2 and argv[0] == "kafka-ready":
        return 0 if kafka_ready(argv[1]) else 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
