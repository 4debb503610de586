"""`make local` from a clean state: its printed summary matches the emulator's final state."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import requests

from audience_sync.webhook_auth import signature_of
from devtools.local_aws import DEV_WEBHOOK_SECRET

ROOT = Path(__file__).resolve().parent.parent


def test_local_pipeline_replays_samples_and_prints_the_audiences() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "devtools.local_pipeline",
            "--gateway-port",
            "0",
            "--moto-port",
            "0",
            "--criteo-port",
            "0",
            "--window",
            "0.3",
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
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
    for _ in range(2):  # a second run works too
        server = subprocess.Popen(
            [*command, "--gateway-port", "0"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
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
        server.send_signal(signal.SIGINT)
        assert server.wait(timeout=30) == 0, "".join(lines)
        for pid in children:
            assert subprocess.run(["ps", "-p", pid], capture_output=True).returncode != 0, f"stray process {pid}"
