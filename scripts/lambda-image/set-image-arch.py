"""Rewrite the architecture recorded in a `docker save` stream:  docker save IMG | set-image-arch.py ARCH | docker load

Docker 20.10 (Debian bookworm's docker.io) ignores `docker import --platform` and records the host
architecture, while `sam local invoke` builds its per-function image with `--platform linux/<function arch>`
and refuses a base image whose metadata says otherwise. The layer itself is untouched; only the image config
JSON (`architecture`, `variant`) changes, so `docker load` gives the image a new ID under the same tag.

Handles the classic `docker save` layout (manifest.json + <config>.json + <layer>/layer.tar), which is what
engines that need this fix write. Streams the layer through without a temporary copy.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile

GOARCH = {"x86_64": "amd64", "amd64": "amd64", "arm64": "arm64", "aarch64": "arm64"}


def main() -> int:
    if len(sys.argv) != 2 or sys.argv[1] not in GOARCH:
        print(f"usage: docker save IMG | {sys.argv[0]} arm64|x86_64 | docker load", file=sys.stderr)
        return 2
    arch = GOARCH[sys.argv[1]]
    patched = 0
    with (
        tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar_in,
        tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar_out,
    ):
        for member in tar_in:
            if member.isfile() and "/" not in member.name and member.name.endswith(".json"):
                data = tar_in.extractfile(member).read()  # type: ignore[union-attr]
                if member.name not in ("manifest.json",):
                    config = json.loads(data)
                    if "rootfs" in config and "architecture" in config:
                        config["architecture"] = arch
                        config.pop("variant", None)
                        data = json.dumps(config, separators=(",", ":")).encode()
                        patched += 1
                member.size = len(data)
                tar_out.addfile(member, io.BytesIO(data))
            elif member.isfile():
                tar_out.addfile(member, tar_in.extractfile(member))
            else:
                tar_out.addfile(member)
    if patched != 1:
        print(f"set-image-arch: expected one image config in the stream, patched {patched}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
