"""`python -m devtools.criteo_emulator`: run the emulator until Ctrl-C."""

from __future__ import annotations

import argparse
import contextlib
import signal
import threading

from devtools.criteo_emulator.server import CriteoEmulator


def main() -> None:
    """Parse options and serve."""
    parser = argparse.ArgumentParser(description="Criteo Marketing Solutions API emulator on loopback")
    parser.add_argument("--port", type=int, default=8642)
    parser.add_argument("--client-id", default="local-dev-client")
    parser.add_argument("--client-secret", default="local-dev-client-secret")
    parser.add_argument("--advertiser-id", default="12345")
    parser.add_argument("--api-version", default="2026-07")
    args = parser.parse_args()
    emulator = CriteoEmulator(
        port=args.port,
        client_id=args.client_id,
        client_secret=args.client_secret,
        advertiser_id=args.advertiser_id,
        api_version=args.api_version,
    )
    emulator.start()
    print(f"Criteo emulator on {emulator.url} (state: {emulator.url}/__admin/state)", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    emulator.stop()


if __name__ == "__main__":
    main()
