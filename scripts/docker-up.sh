#!/usr/bin/env bash
# Make a Docker engine available (Debian's docker.io), start dockerd if none runs, wait until it answers.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .local

if ! command -v dockerd >/dev/null 2>&1; then
  echo "installing docker.io from Debian ..."
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
fi

if docker info >/dev/null 2>&1; then
  echo "docker engine already running ($(docker version --format '{{.Server.Version}}'))"
  exit 0
fi

echo "starting dockerd (log: .local/dockerd.log) ..."
nohup dockerd --storage-driver=overlay2 >.local/dockerd.log 2>&1 &
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    echo "docker engine up ($(docker version --format '{{.Server.Version}}'))"
    exit 0
  fi
  sleep 1
done
echo "dockerd did not come up; last log lines:" >&2
tail -n 20 .local/dockerd.log >&2
exit 1
