"""`python -m devtools.criteo_emulator`: serve the emulator until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import signal
import threading

from devtools.criteo_emulator.server import CriteoEmulator
from devtools.criteo_emulator.spec import SPEC_VERSION


def main(argv: list[str] | None = None) -> None:
    """Parse options, serve, print the URL, wait for a signal."""
    parser = argparse.ArgumentParser(description="Criteo Marketing Solutions API emulator on loopback")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8642, help="0 picks a free port")
    parser.add_argument("--client-id", default="local-dev-client")
    parser.add_argument("--client-secret", default="local-dev-client-secret")
    parser.add_argument("--advertiser-id", default="12345")
    parser.add_argument("--api-version", default=SPEC_VERSION)
    args = parser.parse_args(argv)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with CriteoEmulator(
        host=args.host,
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        advertiser_id=args.advertiser_id,
        api_version=args.api_version,
    ) as emulator:
        print(f"Criteo emulator on {emulator.url} (API {args.api_version}, advertiser {args.advertiser_id})")
        print(f"  state: GET {emulator.url}/__admin/state   faults: POST {emulator.url}/__admin/faults", flush=True)
        stop.wait()
    print("Criteo emulator stopped", flush=True)


if __name__ == "__main__":
    main()
