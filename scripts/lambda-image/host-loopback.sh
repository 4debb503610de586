#!/usr/bin/env bash
# Let Lambda containers reach servers that listen on the host's 127.0.0.1 only (moto, a fake Criteo, ...).
#
#   scripts/lambda-image/host-loopback.sh enable PORT...    # e.g. enable 4566 8642
#   scripts/lambda-image/host-loopback.sh disable PORT...
#   scripts/lambda-image/host-loopback.sh status
#
# Why: `sam local invoke --docker-network host` does not put the container on the host network (SAM CLI
# 1.170 skips host networking altogether; the container stays on docker's default bridge), so 127.0.0.1
# inside the function is the container's own loopback. The container reaches the host through the bridge
# gateway (docker0, 172.17.0.1 by default), which `--add-host host.docker.internal:host-gateway` names.
# A server bound to 127.0.0.1 does not accept connections arriving there; this script DNATs
# <gateway>:PORT arriving on the bridge to 127.0.0.1:PORT (and sets route_localnet on the bridge, which
# the kernel requires for that). Only the listed ports are forwarded. Then invoke with
#   sam local invoke Fn --add-host host.docker.internal:host-gateway --env-vars env.docker.json ...
# where the env file says http://host.docker.internal:PORT. Idempotent; rerun after dockerd restarts
# (a new docker0 starts with route_localnet=0).
set -euo pipefail

TAG=lambda-image-host-loopback
say() { echo "[host-loopback] $*"; }
die() { echo "[host-loopback] ERROR: $*" >&2; exit 1; }

action="${1:-status}"
shift || true
[ "$(id -u)" -eq 0 ] || die "run as root (iptables, sysctl)"
docker version --format '{{.Server.Version}}' >/dev/null 2>&1 || die "no docker engine answers; run scripts/lambda-image/docker-up.sh"

BRIDGE_IF="$(docker network inspect bridge -f '{{index .Options "com.docker.network.bridge.name"}}' 2>/dev/null || true)"
BRIDGE_IF="${BRIDGE_IF:-docker0}"
GATEWAY="$(docker network inspect bridge -f '{{range .IPAM.Config}}{{.Gateway}}{{end}}')"
[ -n "$GATEWAY" ] || GATEWAY="$(ip -4 -o addr show dev "$BRIDGE_IF" 2>/dev/null | awk '{print $4}' | cut -d/ -f1 | head -n1)"
[ -n "$GATEWAY" ] || die "cannot find the address of $BRIDGE_IF"

rules() { # port -> prints "table|chain|rule-spec" lines
  echo "nat|PREROUTING|-i $BRIDGE_IF -d $GATEWAY -p tcp --dport $1 -m comment --comment $TAG -j DNAT --to-destination 127.0.0.1:$1"
  echo "filter|INPUT|-i $BRIDGE_IF -d 127.0.0.1 -p tcp --dport $1 -m comment --comment $TAG -j ACCEPT"
}

case "$action" in
  enable)
    [ $# -gt 0 ] || die "usage: $0 enable PORT..."
    echo 1 >"/proc/sys/net/ipv4/conf/$BRIDGE_IF/route_localnet"
    for port in "$@"; do
      [[ "$port" =~ ^[0-9]+$ ]] || die "not a port: $port"
      while IFS='|' read -r table chain spec; do
        # shellcheck disable=SC2086  # spec is a word list
        iptables -t "$table" -C "$chain" $spec 2>/dev/null || iptables -t "$table" -I "$chain" $spec
      done < <(rules "$port")
      say "$GATEWAY:$port on $BRIDGE_IF -> 127.0.0.1:$port (containers: http://host.docker.internal:$port with --add-host host.docker.internal:host-gateway)"
    done
    ;;
  disable)
    [ $# -gt 0 ] || die "usage: $0 disable PORT..."
    for port in "$@"; do
      while IFS='|' read -r table chain spec; do
        # shellcheck disable=SC2086
        while iptables -t "$table" -C "$chain" $spec 2>/dev/null; do iptables -t "$table" -D "$chain" $spec; done
      done < <(rules "$port")
      say "port $port no longer forwarded"
    done
    if ! iptables -t nat -S PREROUTING | grep -q "$TAG"; then
      echo 0 >"/proc/sys/net/ipv4/conf/$BRIDGE_IF/route_localnet"
      say "no forwarded ports left; route_localnet off on $BRIDGE_IF"
    fi
    ;;
  status)
    say "bridge $BRIDGE_IF, gateway $GATEWAY, route_localnet=$(cat "/proc/sys/net/ipv4/conf/$BRIDGE_IF/route_localnet")"
    iptables -t nat -S PREROUTING | grep "$TAG" || say "no ports forwarded"
    ;;
  *) die "usage: $0 enable|disable PORT... | status" ;;
esac
