#!/usr/bin/env bash
# Make a Docker engine answer on this machine, with nothing but Debian's apt mirror.
#
#   scripts/lambda-image/docker-up.sh
#
# - installs Debian's `docker.io` (engine 20.10, plus containerd, runc, iptables) when `dockerd` is missing;
# - starts `dockerd` in the background (own session, survives this script) unless an engine already answers;
# - waits until the engine answers, then prints client and server versions.
# Safe to run any number of times. A `docker` client alone (`docker --version` answers) is not an engine:
# what is checked is that the *server* answers (`docker version --format '{{.Server.Version}}'`).
#
# Environment:
#   DOCKERD_LOG      dockerd's log file            (default: <repo>/.local/dockerd.log, git-ignored)
#   DOCKERD_ARGS     extra dockerd arguments       (e.g. "--storage-driver=vfs")
#   DOCKER_HOST      unix://PATH: start/ask the engine on that socket instead of /var/run/docker.sock
#   DOCKER_UP_TIMEOUT  seconds to wait for the engine (default 90)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
LOG="${DOCKERD_LOG:-$REPO/.local/dockerd.log}"
TIMEOUT="${DOCKER_UP_TIMEOUT:-90}"
export DEBIAN_FRONTEND=noninteractive

say() { echo "[docker-up] $*"; }
die() { echo "[docker-up] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (installs packages and starts dockerd)"

apt_updated=0
apt_install() {
  if [ "$apt_updated" -eq 0 ]; then
    say "apt-get update ..."
    apt-get update -qq
    apt_updated=1
  fi
  say "apt-get install $* ..."
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

engine_version() { docker version --format '{{.Server.Version}}' 2>/dev/null; }

# 1. Packages. `docker.io` depends on containerd, runc, tini and iptables; the client it ships is
#    /usr/bin/docker (a newer client earlier on PATH, e.g. /usr/local/bin/docker, works too: API negotiation).
need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
command -v iptables >/dev/null 2>&1 || need+=(iptables)
[ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
if [ ${#need[@]} -gt 0 ]; then
  apt_install "${need[@]}"
fi
command -v dockerd >/dev/null 2>&1 || die "dockerd still missing after installing docker.io"
command -v docker >/dev/null 2>&1 || die "no docker client on PATH"

# 2. Already answering? Then nothing to do.
if v="$(engine_version)" && [ -n "$v" ]; then
  say "engine already running (server $v, client $(docker version --format '{{.Client.Version}}' 2>/dev/null))"
  exit 0
fi

dockerd_args=()
pidfile=/var/run/docker.pid
case "${DOCKER_HOST:-}" in
  "") ;;
  unix://*) dockerd_args+=(-H "$DOCKER_HOST") ;;
  *) die "DOCKER_HOST=$DOCKER_HOST is not a local unix socket; start that engine yourself" ;;
esac
# shellcheck disable=SC2206  # DOCKERD_ARGS is a word list on purpose
[ -n "${DOCKERD_ARGS:-}" ] && dockerd_args+=(${DOCKERD_ARGS})
for ((i = 0; i < ${#dockerd_args[@]}; i++)); do
  case "${dockerd_args[$i]}" in
    --pidfile=*) pidfile="${dockerd_args[$i]#--pidfile=}" ;;
    -p | --pidfile) pidfile="${dockerd_args[$((i + 1))]}" ;;
  esac
done

dockerd_pid() {
  # The dockerd that owns our pid file, if it is alive.
  local pid
  [ -s "$pidfile" ] || return 1
  pid="$(cat "$pidfile")"
  [ -n "$pid" ] && [ -d "/proc/$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && echo "$pid"
}

wait_for_engine() {
  local pid="$1" waited=0
  while [ "$waited" -lt "$TIMEOUT" ]; do
    if v="$(engine_version)" && [ -n "$v" ]; then
      return 0
    fi
    if [ -n "$pid" ] && [ ! -d "/proc/$pid" ]; then
      return 1   # dockerd died
    fi
    sleep 1
    waited=$((waited + 1))
  done
  return 1
}

start_dockerd() {
  mkdir -p "$(dirname "$LOG")"
  echo "---- $(date -u +%FT%TZ) docker-up.sh: dockerd ${dockerd_args[*]:-} ----" >>"$LOG"
  # setsid: own session and process group, so the engine outlives this script and the shell that ran it.
  setsid nohup dockerd "${dockerd_args[@]}" >>"$LOG" 2>&1 </dev/null &
  echo $!
}

# 3. A dockerd may be starting (or be wedged). Give a live one the chance to answer before starting another.
if pid="$(dockerd_pid)"; then
  say "dockerd (pid $pid) is running but not answering yet; waiting up to ${TIMEOUT}s ..."
  wait_for_engine "$pid" || die "dockerd pid $pid does not answer; see $LOG (stop it, then rerun)"
  say "engine up (server $(engine_version))"
  exit 0
fi
if [ -e "$pidfile" ]; then
  say "removing stale $pidfile"
  rm -f "$pidfile"
fi

# 4. Start it.
say "starting dockerd in the background (log: $LOG) ..."
t0=$(date +%s)
pid="$(start_dockerd)"
if ! wait_for_engine "$pid"; then
  # Debian defaults to iptables-nft; some kernels only have the legacy tables. Retry once with those.
  if grep -qiE "iptables|nf_tables|nat.*table" <(tail -n 40 "$LOG") &&
    [ -x /usr/sbin/iptables-legacy ] &&
    [ "$(readlink -f "$(command -v iptables)")" != /usr/sbin/iptables-legacy ]; then
    say "dockerd failed on iptables; switching to iptables-legacy and retrying ..."
    [ -d "/proc/$pid" ] && kill "$pid" 2>/dev/null && sleep 2
    update-alternatives --set iptables /usr/sbin/iptables-legacy >/dev/null
    update-alternatives --set ip6tables /usr/sbin/ip6tables-legacy >/dev/null 2>&1 || true
    rm -f "$pidfile"
    pid="$(start_dockerd)"
    wait_for_engine "$pid" || { tail -n 30 "$LOG" >&2; die "dockerd did not come up; see $LOG"; }
  else
    tail -n 30 "$LOG" >&2
    die "dockerd did not come up within ${TIMEOUT}s; see $LOG"
  fi
fi
say "engine up in $(($(date +%s) - t0))s (dockerd pid $pid keeps running after this script)"
docker version --format 'client {{.Client.Version}} (API {{.Client.APIVersion}}), server {{.Server.Version}} (API {{.Server.APIVersion}}, {{.Server.Os}}/{{.Server.Arch}})'
