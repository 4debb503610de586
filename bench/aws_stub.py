"""A minimal stand-in for SQS SendMessageBatch and Secrets Manager GetSecretValue (AWS JSON protocol).

Runs in its own process so the ingest benchmark times our handler, not a queue: `python -m bench.aws_stub`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from devtools.local_aws import DEV_WEBHOOK_SECRET, free_port

ROOT = Path(__file__).resolve().parent.parent


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else delayed ACKs add ~40 ms per call

    def do_POST(self) -> None:
        request = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))) or b"{}")
        target = self.headers.get("x-amz-target", "")
        answer: dict[str, Any]
        if target.endswith("SendMessageBatch"):
            entries = request.get("Entries", [])
            answer = {"Successful": [{"Id": e["Id"], "MessageId": e["Id"], "MD5OfMessageBody": ""} for e in entries]}
        elif target.endswith("GetSecretValue"):
            answer = {"ARN": request.get("SecretId", ""), "Name": "webhook", "SecretString": DEV_WEBHOOK_SECRET}
        else:
            answer = {}
        body = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("content-type", "application/x-amz-json-1.0")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


class AwsStub:
    """The stub server in a child process on a free loopback port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> AwsStub:
        self._process = subprocess.Popen([sys.executable, "-m", "bench.aws_stub", str(self.port)], cwd=ROOT)
        import socket
        import time

        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("the AWS stub did not start")

    def __exit__(self, *exc: object) -> None:
        if self._process:
            self._process.terminate()
            self._process.wait(timeout=10)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    ThreadingHTTPServer(("127.0.0.1", parser.parse_args().port), _Handler).serve_forever()
