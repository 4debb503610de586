"""Write a `docker load` archive for a root filesystem tarball, with the architecture in its metadata.

`docker import` (Docker 20.10) always records the host architecture, and `sam local invoke` then
refuses to layer an arm64 function on it; a hand-made archive says arm64 where it must.
usage: image_archive.py LAYER_TAR ARCH TAG OUT_DIR [KEY=VALUE label ...]
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

ENV = [
    "LANG=C.UTF-8",
    "TZ=:/etc/localtime",
    "LAMBDA_TASK_ROOT=/var/task",
    "LAMBDA_RUNTIME_DIR=/var/runtime",
    "PATH=/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin",
]


def main(layer_tar: str, arch: str, tag: str, out_dir: str, *labels: str) -> None:
    """Write manifest.json and the image config beside the layer, ready for `tar -c | docker load`."""
    out = Path(out_dir)
    layer = Path(layer_tar)
    digest = hashlib.sha256()
    with layer.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    config = {
        "architecture": {"x86_64": "amd64"}.get(arch, arch),
        "os": "linux",
        "config": {
            "Env": ENV,
            "Entrypoint": ["/var/runtime/bootstrap"],
            "WorkingDir": "/var/task",
            "Labels": dict(label.split("=", 1) for label in labels),
        },
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{digest.hexdigest()}"]},
        "history": [{"created_by": "scripts/build-lambda-image.sh (debootstrap + awslambdaric)"}],
    }
    config_bytes = json.dumps(config).encode()
    config_name = hashlib.sha256(config_bytes).hexdigest() + ".json"
    (out / config_name).write_bytes(config_bytes)
    manifest = [{"Config": config_name, "RepoTags": [tag], "Layers": [layer.name]}]
    (out / "manifest.json").write_text(json.dumps(manifest))


if __name__ == "__main__":
    main(*sys.argv[1:])
