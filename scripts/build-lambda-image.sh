#!/usr/bin/env bash
# Build a stand-in for the AWS Lambda python3.13 image with no registry: Debian trixie (python 3.13)
# via debootstrap, the Lambda runtime interface client (awslambdaric) at /var/runtime, docker import.
#   scripts/build-lambda-image.sh [arm64|x86_64]      (default arm64, the architecture we deploy)
# arm64 runs under qemu-user-static (binfmt). The rootfs is cached in .local/lambda-image/<arch>/.
set -euo pipefail
cd "$(dirname "$0")/.."
ARCH="${1:-arm64}"
case "$ARCH" in
  arm64) DEB_ARCH=arm64; WHEEL_PLATFORM=manylinux2014_aarch64 ;;
  x86_64) DEB_ARCH=amd64; WHEEL_PLATFORM=manylinux2014_x86_64 ;;
  *) echo "usage: $0 [arm64|x86_64]" >&2; exit 2 ;;
esac
IMAGE="local/lambda-python:3.13-$ARCH"
WORK=".local/lambda-image/$ARCH"
ROOTFS="$WORK/rootfs"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
started=$(date +%s)

need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
if [ "$ARCH" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
  command -v qemu-aarch64-static >/dev/null 2>&1 || need+=(qemu-user-static)
  command -v update-binfmts >/dev/null 2>&1 || need+=(binfmt-support)
fi
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} from Debian ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

if [ "$ARCH" = arm64 ] && [ "$(uname -m)" != aarch64 ]; then
  # Containers may start without binfmt_misc mounted; arm64 binaries then fail with "exec format error".
  [ -e /proc/sys/fs/binfmt_misc/status ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  [ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] || { echo "qemu-aarch64 binfmt is not registered" >&2; exit 1; }
fi

if [ ! -f "$ROOTFS/.debootstrap-done" ]; then
  echo "debootstrap trixie ($DEB_ARCH) into $ROOTFS (a few minutes under qemu) ..."
  rm -rf "$ROOTFS"; mkdir -p "$ROOTFS"
  debootstrap --arch="$DEB_ARCH" --variant=minbase --include=python3,ca-certificates trixie "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 30 "$WORK/debootstrap.log" >&2; exit 1; }
  rm -rf "$ROOTFS"/var/cache/apt/archives/*.deb "$ROOTFS"/var/lib/apt/lists/*
  touch "$ROOTFS/.debootstrap-done"
fi

if [ ! -f "$ROOTFS/var/runtime/.ric-done" ] || [ ! -d "$ROOTFS/var/runtime/boto3" ]; then
  echo "installing awslambdaric and boto3 (the managed runtime ships it) for $WHEEL_PLATFORM / cp313 into /var/runtime ..."
  mkdir -p "$ROOTFS/var/runtime" "$ROOTFS/var/task" "$ROOTFS/opt"
  python3 -m pip install --quiet --disable-pip-version-check --no-warn-script-location \
    --target "$ROOTFS/var/runtime" --python-version 3.13 --implementation cp --only-binary=:all: \
    --platform "$WHEEL_PLATFORM" awslambdaric boto3 2>&1 | grep -v "is ignored: it is neither" || true
  test -d "$ROOTFS/var/runtime/awslambdaric" && test -d "$ROOTFS/var/runtime/boto3"
  cat >"$ROOTFS/var/runtime/bootstrap" <<'BOOT'
#!/bin/sh
# Lambda custom-runtime entry point: the runtime interface client loads $_HANDLER from /var/task.
export PYTHONPATH="/var/runtime:/var/task:/opt/python${PYTHONPATH:+:$PYTHONPATH}"
exec /usr/bin/python3 -m awslambdaric "${_HANDLER:-$1}"
BOOT
  chmod +x "$ROOTFS/var/runtime/bootstrap"
  touch "$ROOTFS/var/runtime/.ric-done"
fi

stamp=$(find "$ROOTFS/var/runtime/.ric-done" "$ROOTFS/.debootstrap-done" -printf '%T@\n' | sort | tail -n1)
if [ "$(docker image inspect -f '{{index .Config.Labels "rootfs-stamp"}}' "$IMAGE" 2>/dev/null)" != "$stamp" ]; then
  echo "docker load $IMAGE ($ARCH in the image metadata) ..."
  ARCHIVE="$WORK/archive"
  rm -rf "$ARCHIVE"; mkdir -p "$ARCHIVE"
  tar -C "$ROOTFS" --exclude=./proc/* --exclude=./sys/* --exclude=./dev/* -cf "$ARCHIVE/layer.tar" .
  python3 scripts/image_archive.py "$ARCHIVE/layer.tar" "$ARCH" "$IMAGE" "$ARCHIVE" "rootfs-stamp=$stamp"
  tar -C "$ARCHIVE" -c . | docker load >/dev/null
  rm -rf "$ARCHIVE"
fi
echo "$IMAGE ready in $(( $(date +%s) - started ))s"
