"""A WSGI app served on loopback from a background thread (the gateway and the Criteo emulator), and port checks.

`port_in_use` / `describe_listener` tell who holds a loopback port (and whether it speaks HTTP at all), in a
bounded time: the local stack uses them to refuse a busy port with one clear line instead of a traceback or a
hang on a program that accepts connections and never answers.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from werkzeug.serving import BaseWSGIServer, make_server

PROBE_TIMEOUT_S = 1.5


class BackgroundServer:
    """Threaded werkzeug server; `port` 0 picks a free one (see `.port`)."""

    def __init__(self, app: Any, port: int, host: str = "127.0.0.1") -> None:
        logging.getLogger("werkzeug").setLevel(logging.ERROR)  # per-request logs halve throughput
        self._server: BaseWSGIServer = make_server(host, port, app, threaded=True)
        self.host = host
        self.port = int(self._server.server_port)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def start(self) -> None:
        """Serve in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when binding `host:port` fails because another socket holds it (what our servers would hit)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug does: TIME_WAIT is no owner
        try:
            sock.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return True
            raise
    return False


def is_address_in_use(error: BaseException) -> bool:
    """Whether an exception is a failed bind on a port that is taken."""
    return isinstance(error, OSError) and error.errno == errno.EADDRINUSE


def get_json(url: str, timeout: float = PROBE_TIMEOUT_S) -> tuple[int, Any]:
    """(status, decoded JSON or None) of a GET; status 0 when nothing answered in time or the answer is not HTTP."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback URLs only)
            status, body = int(response.status), response.read(1_000_000)
    except urllib.error.HTTPError as error:
        status, body = int(error.code), error.read(1_000_000)
    except (OSError, ValueError):  # refused, reset, timed out, not HTTP
        return 0, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, None


def http_banner(port: int, host: str = "127.0.0.1", timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """The status line (and Server header) a listener sends for `GET /`; None when it sends nothing in time."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(f"GET / HTTP/1.0\r\nHost: {host}:{port}\r\n\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data and len(data) < 8192:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    if not data:
        return None
    lines = data.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/"):
        return "a non-HTTP answer"
    server = next((line.split(":", 1)[1].strip() for line in lines[1:] if line.lower().startswith("server:")), "")
    return f"HTTP {lines[0].split(' ', 2)[1] if ' ' in lines[0] else '?'}" + (f", Server: {server}" if server else "")


def listener_pid(port: int) -> int | None:
    """The process listening on a TCP port, when /proc lets us see it (Linux; all of them as root)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                    inodes.add(f"socket:[{fields[9]}]")
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                        return int(pid)
    return None


def command_line(pid: int) -> str:
    """A process's command line on one line ('' when it is gone or hidden)."""
    try:
        return " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split())
    except OSError:
        return ""


def parent_pid(pid: int) -> int | None:
    """A process's parent (None when it is gone or hidden)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def listener_process(port: int) -> str | None:
    """'pid N (command line)' of the process listening on a TCP port, when /proc lets us see it."""
    pid = listener_pid(port)
    if pid is None:
        return None
    command = command_line(pid)
    return f"pid {pid} ({command[:80]}{'...' if len(command) > 80 else ''})"


def describe_listener(port: int, host: str = "127.0.0.1", probed: tuple[str | None] | None = None) -> str:
    """What holds a port, in a few words: the process if visible, and what it answers to `GET /` (bounded time).

    `probed`: `(http_banner(port),)` when the caller asked already (a silent listener costs a timeout per ask).
    """
    owner = listener_process(port)
    banner = probed[0] if probed else http_banner(port, host)
    answer = f"answers {banner}" if banner else "accepts connections but does not answer"
    return f"{owner}, which {answer}" if owner else f"a program that {answer}"
