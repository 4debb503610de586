"""`make local` from a clean state: its printed summary matches the emulator's final state; `make serve` logs a
line per request and per sync batch and `make state` reads it; a busy port stops the stack with one clear line;
the offline Lambda image build takes its Debian mirror from the machine's apt sources."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from audience_sync.webhook_auth import signature_of
from devtools.local_aws import DEV_WEBHOOK_SECRET, free_port
from tests.conftest import ROOT, run_bounded

PIPELINE = [sys.executable, "-m", "devtools.local_pipeline"]
BUILD_SH = ROOT / "scripts" / "lambda-image" / "build.sh"


@contextmanager
def killed_at_exit(process: subprocess.Popen[str]) -> Iterator[subprocess.Popen[str]]:
    """The process group is killed if the test leaves it running (a failed assertion before Ctrl-C)."""
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_local_pipeline_replays_samples_and_prints_the_audiences() -> None:
    result = run_bounded(
        [*PIPELINE, "--gateway-port", "0", "--moto-port", "0", "--criteo-port", "0", "--window", "0.3", "--json"],
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert re.search(r"batch_mixed\.json\s+200\s+accepted 8, ignored 2, rejected 0", out)
    assert re.search(r"\(bad signature\)\s+401\s+invalid_signature", out)
    assert re.search(r"\(malformed JSON\)\s+400\s+malformed_json", out)
    summary = json.loads(out[out.index("\n{") :])
    audiences = summary["audiences"]
    # From events/payloads: cart gets jane (email+madid), max (email), b02 (madid); john exits (never was in).
    assert audiences["segment_cart_abandoners_7d"]["members"] == {"email": 2, "madid": 2}
    assert audiences["segment_high_value_buyers"]["members"] == {"email": 2, "madid": 1}
    assert audiences["segment_lapsed_subscribers"]["members"] == {"email": 1}
    assert audiences["segment_vip_customers"]["members"] == {"email": 1}
    assert summary["dead_letters"] == {}
    assert summary["criteo_calls"]["token"] == 1
    for name, row in audiences.items():
        assert f"{name}" in out and str(row["id"]) in out


def test_serve_mode_answers_curl_and_ctrl_c_leaves_no_process_behind() -> None:
    command = [sys.executable, "-m", "devtools.local_pipeline", "--serve", "--moto-port", "0", "--criteo-port", "0"]
    for run in range(2):  # a second run works too, started as a script's background job (SIGINT ignored)
        started = subprocess.Popen(
            [*command, "--gateway-port", "0"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},  # SIGABRT prints every thread's stack
            preexec_fn=(lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)) if run else None,
        )
        with killed_at_exit(started) as server:
            serve_once(server, run)


def serve_once(server: subprocess.Popen[str], run: int) -> None:
    """One `--serve`: a signed request, (the first time) `--state` and the busy-port check, Ctrl-C, its log."""
    assert server.stdout is not None
    lines = []
    for line in server.stdout:
        lines.append(line)
        if line.startswith("Serving."):
            break
    url = line.split(" to ")[-1].strip()
    own = b'{"type":"track","event":"Audience Entered","messageId":"curl-1","timestamp":"2026-11-22T10:00:00Z",'
    own += b'"userId":"me-1","properties":{"audience_key":"mine"},"context":{"traits":{"email":"me@example.com"}}}'
    answer = requests.post(
        url,
        data=own,
        headers={"Content-Type": "application/json", "X-Signature": signature_of(own, DEV_WEBHOOK_SECRET)},
        timeout=30,
    )
    assert answer.status_code == 200 and answer.json()["accepted"] == 1
    children = subprocess.run(["pgrep", "-P", str(server.pid)], capture_output=True, text=True).stdout.split()
    assert children, "moto runs in its own process"
    if run == 0:
        check_state_and_busy_ports(url, "".join(lines), own)
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.send_signal(signal.SIGABRT)
        server.wait(timeout=30)
        os.killpg(server.pid, signal.SIGKILL)  # its moto holds the output pipe open
        raise AssertionError("no exit within 30 s of Ctrl-C; its threads:\n" + server.stdout.read()[-8000:]) from None
    assert server.returncode == 0, "".join(lines)
    for pid in children:
        assert subprocess.run(["ps", "-p", pid], capture_output=True).returncode != 0, f"stray process {pid}"
    log = server.stdout.read()
    assert "me@example.com" not in log and "me-1" not in log
    if run > 0:
        return
    # One line per webhook request and per sync batch (`--state` waited for it), counts and never an identifier.
    assert re.search(r"^\d\d:\d\d:\d\d webhook  401  invalid_signature  \(", log, re.M), log
    assert re.search(r"^\d\d:\d\d:\d\d webhook  200  accepted 1, ignored 0, rejected 0 -> 1 records", log, re.M), log
    assert re.search(r"^\d\d:\d\d:\d\d sync #\d+  1 message\(s\) -> 1 PATCH\(es\): \+1 / -0 identifiers", log, re.M), (
        log
    )


def check_state_and_busy_ports(url: str, banner: str, own: bytes) -> None:
    """While a `--serve` runs: a bad request is logged too, `--state` prints its table once the queue drained,
    and its ports are refused to another stack (naming it: another local stack, not a stranger)."""
    requests.post(url, data=own, headers={"Content-Type": "application/json", "X-Signature": "00"}, timeout=30)
    gateway_port = url.split(":")[-1].split("/")[0]
    state = run_bounded([*PIPELINE, "--state", "--gateway-port", gateway_port], timeout=90)
    assert state.returncode == 0, state.stderr
    row = re.search(r"^  segment_mine\s+\d+\s+(\d+)\s+(.+?)\s+(\d+)\s+(\d+)\s+(\d+)$", state.stdout, re.M)
    assert row, state.stdout
    assert row.groups() == ("1", "1 email", "1", "0", "0"), "the curl'd user, synced after the batching window"
    assert "added, removed, invalid" in state.stdout, "the table carries its legend"
    moto_port = re.search(r"moto http://127\.0\.0\.1:(\d+)", banner)
    assert moto_port
    taken = run_bounded(
        [sys.executable, "-m", "devtools.local_stack", "--need-ports", moto_port.group(1), "--for", "make sam-invoke"]
    )
    assert taken.returncode == 1
    assert f"make sam-invoke needs port {moto_port.group(1)}" in taken.stderr
    assert "another local stack's moto (a `make serve` still running" in taken.stderr


def test_state_without_a_running_serve_says_what_to_start() -> None:
    port = str(free_port())
    done = run_bounded([*PIPELINE, "--state", "--gateway-port", port])
    assert done.returncode == 1
    assert f"nothing answers on 127.0.0.1:{port}: start `make serve` first" in done.stderr


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def foreign_http_server() -> Iterator[int]:
    """Another program's HTTP server on a loopback port."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield int(server.server_address[1])
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def silent_listener() -> Iterator[int]:
    """A socket that accepts connections (the kernel completes them) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize(
    ("flag", "holder"),
    [("--moto-port", "http"), ("--moto-port", "silent"), ("--criteo-port", "silent"), ("--gateway-port", "http")],
)
def test_a_busy_port_stops_the_stack_with_one_line_naming_it_and_its_flag(flag: str, holder: str) -> None:
    ports = {"--moto-port": "0", "--criteo-port": "0", "--gateway-port": "0"}
    with foreign_http_server() if holder == "http" else silent_listener() as port:
        ports[flag] = str(port)
        started = time.monotonic()
        done = run_bounded([*PIPELINE, *(item for pair in ports.items() for item in pair)])
        seconds = time.monotonic() - started
    assert done.returncode == 1, done.stdout + done.stderr
    assert seconds < 30, f"took {seconds:.0f}s: a busy port must not cost a hang"
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith(f"error: port {port} ") and f"{flag} PORT" in lines[0]
    assert f"pid {os.getpid()}" in lines[0], "the program holding the port is named"
    assert ("answers HTTP 200" if holder == "http" else "accepts connections but does not answer") in lines[0]
    assert "Local stack up" not in done.stdout


def _mirror(apt_etc: Path, **env: str) -> list[str]:
    done = subprocess.run(
        ["bash", str(BUILD_SH), "--print-mirror"],
        env={**os.environ, "APT_ETC": str(apt_etc), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return done.stdout.rstrip("\n").split("\t")


def test_lambda_image_build_takes_the_debian_mirror_from_the_machines_apt_sources(tmp_path: Path) -> None:
    listed = tmp_path / "sources.list.d"
    listed.mkdir()
    assert _mirror(tmp_path) == ["http://deb.debian.org/debian", f"default: no Debian archive in {tmp_path} sources"]
    (tmp_path / "sources.list").write_text("deb http://archive.ubuntu.com/ubuntu noble main\n")
    assert _mirror(tmp_path)[0] == "http://deb.debian.org/debian", "an Ubuntu archive cannot debootstrap trixie"
    (listed / "debian.sources").write_text(
        "Types: deb\nURIs: http://security.example/debian-security\nSuites: bookworm-security\nComponents: main\n\n"
        "Types: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: bookworm\n\n"
        "Types: deb\n# a comment inside the stanza\nURIs:\n http://mirror.example/debian/\n"
        "Suites: bookworm bookworm-updates\nComponents: main\n"
    )
    assert _mirror(tmp_path) == ["http://mirror.example/debian", str(listed / "debian.sources")]
    (listed / "a-local.list").write_text(
        "# deb http://commented.example/debian bookworm main\ndeb-src http://src.example/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] https://one.example/debian trixie main\n"
    )
    assert _mirror(tmp_path)[0] == "https://one.example/debian", "apt's order: sources.list.d by name"
    assert _mirror(tmp_path, DEBIAN_MIRROR="http://override.example/debian") == [
        "http://override.example/debian",
        "DEBIAN_MIRROR",
    ]
