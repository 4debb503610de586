#!/usr/bin/env bash
# Build a local stand-in for the AWS Lambda python3.13 base image with no image registry:
# Debian trixie (Python 3.13) via debootstrap + the Lambda runtime interface client (awslambdaric) and boto3
# in /var/runtime, imported into Docker as local/lambda-python:3.13-<arch>.
#
#   scripts/lambda-image/build.sh [--arch arm64|x86_64] [--rebuild] [--print-mirror]
#
#   --arch          target architecture (default arm64, what we deploy). A foreign architecture runs under
#                   qemu-user-static through binfmt_misc (installed and enabled here).
#   --rebuild       throw the cached root filesystem away and start over.
#   --print-mirror  print the Debian mirror debootstrap would use, and where it came from; change nothing.
#
# Needs root: apt-get (debootstrap, qemu), dockerd (docker-up.sh), binfmt_misc, chroot.
#
# Cached in <repo>/.local/lambda-image/<arch>/ (git-ignored): rootfs/ plus stamp files. A second run with an
# unchanged rootfs and an existing image does nothing. Use the image with:
#   sam local invoke Fn -e ev.json --invoke-image local/lambda-python:3.13-arm64 --skip-pull-image
#
# Debian mirror: DEBIAN_MIRROR if set; else the first Debian archive in this machine's own apt sources
#   ($APT_ETC/sources.list, sources.list.d/*.list one-line entries and *.sources deb822 `URIs:`, APT_ETC
#   defaulting to /etc/apt) with a Debian suite (bookworm, trixie, sid, stable, ...; not -security);
#   else http://deb.debian.org/debian.
# Environment: DEBIAN_MIRROR, APT_ETC, LAMBDA_IMAGE_CACHE (cache root),
#   AWSLAMBDARIC_VERSION (default 4.2.2), BOTO3_SPEC (default "boto3"; empty = no boto3),
#   IMAGE_REPO (default local/lambda-python).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
export DEBIAN_FRONTEND=noninteractive

ARCH=arm64
REBUILD=0
PRINT_MIRROR=0
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) ARCH="${2:?--arch needs a value}"; shift 2 ;;
    --arch=*) ARCH="${1#--arch=}"; shift ;;
    --rebuild) REBUILD=1; shift ;;
    --print-mirror) PRINT_MIRROR=1; shift ;;
    -h | --help) sed -n '2,25p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (try --help)" >&2; exit 2 ;;
  esac
done

case "$ARCH" in
  arm64 | aarch64) ARCH=arm64; DEB_ARCH=arm64; UNAME_ARCH=aarch64; WHEEL_PLATFORM=manylinux2014_aarch64; QEMU=qemu-aarch64 ;;
  x86_64 | amd64) ARCH=x86_64; DEB_ARCH=amd64; UNAME_ARCH=x86_64; WHEEL_PLATFORM=manylinux2014_x86_64; QEMU=qemu-x86_64 ;;
  *) echo "--arch must be arm64 or x86_64, not $ARCH" >&2; exit 2 ;;
esac

SUITE=trixie # Debian 13: python3 is 3.13 (bookworm has 3.11)

# The machine's own Debian mirror: "URI<TAB>file" of the first apt source with a Debian suite, or nothing.
# One-line entries: `deb [options] URI SUITE COMPONENT...`; deb822 stanzas: Types/URIs/Suites/Enabled fields.
# Files in apt's order: sources.list, then sources.list.d/*.list and *.sources by name.
apt_debian_mirror() {
  local etc="${APT_ETC:-/etc/apt}" f uri
  for f in "$etc/sources.list" "$etc"/sources.list.d/*; do
    case "$f" in *.list | *.sources) ;; *) continue ;; esac
    [ -f "$f" ] && [ -r "$f" ] || continue
    uri="$(awk '
      function debian_suite(s) {
        if (s ~ /-security$/) return 0
        sub(/-(updates|backports|backports-sloppy|proposed-updates)$/, "", s)
        return s ~ /^(jessie|stretch|buster|bullseye|bookworm|trixie|forky|duke|sid|stable|testing|unstable|oldstable|oldoldstable)$/
      }
      function usable(uri) { return uri ~ /^(https?|ftp|file):/ && uri !~ /debian-security|ubuntu/ }
      function pick(uri) { sub(/\/+$/, "", uri); print uri; found = 1; exit }
      function extend(v) {
        if (field == "types") types = types " " v
        else if (field == "uris") uris = uris " " v
        else if (field == "suites") suites = suites " " v
        else if (field == "enabled") enabled = v
      }
      function stanza(   i, j, n, m, us, ss) {
        if (types ~ /(^|[ \t])deb([ \t]|$)/ && tolower(enabled) !~ /^[ \t]*no/) {
          n = split(suites, ss, /[ \t]+/)
          m = split(uris, us, /[ \t]+/)
          for (i = 1; i <= n; i++) if (debian_suite(ss[i])) for (j = 1; j <= m; j++) if (usable(us[j])) pick(us[j])
        }
        types = ""; uris = ""; suites = ""; enabled = ""; field = ""
      }
      FILENAME ~ /\.sources$/ {
        if ($0 ~ /^#/) next
        if ($0 ~ /^[ \t]*$/) { stanza(); next }
        if ($0 ~ /^[ \t]/) { value = $0; sub(/^[ \t]+/, "", value); extend(value); next }
        field = tolower($0); sub(/:.*/, "", field); value = $0; sub(/^[^:]*:[ \t]*/, "", value); extend(value)
        next
      }
      {
        line = $0; sub(/#.*/, "", line); gsub(/\[[^]]*\]/, " ", line)
        n = split(line, w, /[ \t]+/); k = 1
        while (k <= n && w[k] == "") k++
        if (w[k] == "deb" && usable(w[k + 1]) && debian_suite(w[k + 2])) pick(w[k + 1])
      }
      END { if (!found && FILENAME ~ /\.sources$/) stanza() }
    ' "$f")" || uri=""
    if [ -n "$uri" ]; then
      printf '%s\t%s\n' "$uri" "$f"
      return 0
    fi
  done
  return 0
}

if [ -n "${DEBIAN_MIRROR:-}" ]; then
  MIRROR="$DEBIAN_MIRROR" MIRROR_FROM="DEBIAN_MIRROR"
elif found="$(apt_debian_mirror)" && [ -n "$found" ]; then
  MIRROR="${found%%$'\t'*}" MIRROR_FROM="${found#*$'\t'}"
else
  MIRROR="http://deb.debian.org/debian" MIRROR_FROM="default: no Debian archive in ${APT_ETC:-/etc/apt} sources"
fi
if [ "$PRINT_MIRROR" -eq 1 ]; then
  printf '%s\t%s\n' "$MIRROR" "$MIRROR_FROM"
  exit 0
fi
INCLUDE="python3,ca-certificates,tzdata"
RIC_VERSION="${AWSLAMBDARIC_VERSION:-4.2.2}" # 3.0.0+ has cp313 wheels for both manylinux2014 arches
BOTO3_SPEC="${BOTO3_SPEC-boto3}"             # the managed runtime ships boto3; our functions rely on it
IMAGE="${IMAGE_REPO:-local/lambda-python}:3.13-$ARCH"
CACHE="${LAMBDA_IMAGE_CACHE:-$REPO/.local/lambda-image}/$ARCH"
ROOTFS="$CACHE/rootfs"
FOREIGN=0
[ "$(uname -m)" = "$UNAME_ARCH" ] || FOREIGN=1

T0=$(date +%s)
say() { echo "[lambda-image $ARCH] $*"; }
die() { echo "[lambda-image $ARCH] ERROR: $*" >&2; exit 1; }
since() { echo "$(($(date +%s) - $1))s"; }

[ "$(id -u)" -eq 0 ] || die "run as root (apt, debootstrap, binfmt_misc)"

# --- 1. Docker engine ------------------------------------------------------------------------------
"$HERE/docker-up.sh"

# --- 2. Host packages --------------------------------------------------------------------------------
need=()
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
[ -e /usr/share/keyrings/debian-archive-keyring.gpg ] || need+=(debian-archive-keyring)
if [ "$FOREIGN" -eq 1 ]; then
  command -v "$QEMU-static" >/dev/null 2>&1 || need+=(qemu-user-static)
  command -v update-binfmts >/dev/null 2>&1 || need+=(binfmt-support)
fi
PY=""
for candidate in "$REPO/.venv/bin/python" python3; do
  if "$candidate" -m pip --version >/dev/null 2>&1; then PY="$candidate"; break; fi
done
[ -n "$PY" ] || need+=(python3-pip)
if [ ${#need[@]} -gt 0 ]; then
  say "installing ${need[*]} (apt) ..."
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -n "$PY" ] || PY=python3

# --- 3. binfmt_misc: run $ARCH binaries through qemu (chroot during debootstrap, and containers) ------
if [ "$FOREIGN" -eq 1 ]; then
  if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    say "mounting binfmt_misc ..."
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
      die "cannot mount binfmt_misc (an unprivileged container?); $ARCH binaries cannot run here"
  fi
  if ! grep -qx enabled "/proc/sys/fs/binfmt_misc/$QEMU" 2>/dev/null; then
    say "enabling binfmt for $QEMU ..."
    update-binfmts --enable "$QEMU" || true
  fi
  grep -qx enabled "/proc/sys/fs/binfmt_misc/$QEMU" 2>/dev/null ||
    die "binfmt entry $QEMU is not enabled (see /proc/sys/fs/binfmt_misc/); try: update-binfmts --enable $QEMU"
  # The F (fix-binary) flag makes the kernel open the interpreter now, so it works inside containers too.
  grep -q '^flags:.*F' "/proc/sys/fs/binfmt_misc/$QEMU" ||
    say "WARNING: $QEMU is registered without the F flag; containers may fail with 'exec format error'"
fi

# --- 4. Root filesystem (debootstrap) ----------------------------------------------------------------
mkdir -p "$CACHE"
ROOTFS_SPEC="suite=$SUITE arch=$DEB_ARCH variant=minbase include=$INCLUDE"
if [ "$REBUILD" -eq 1 ] || [ ! -f "$CACHE/rootfs.stamp" ] || [ "$(head -n1 "$CACHE/rootfs.stamp")" != "$ROOTFS_SPEC" ]; then
  [ "$REBUILD" -eq 1 ] && say "--rebuild: discarding the cached rootfs"
  rm -f "$CACHE/rootfs.stamp" "$CACHE/runtime.stamp" "$CACHE/image.stamp"
  # A half-built rootfs from an interrupted run is thrown away. Nothing may still be mounted in it.
  for dir in "$ROOTFS" "$ROOTFS.tmp"; do
    grep -q " $dir/" /proc/mounts && awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r umount -l
    rm -rf "$dir"
  done
  say "debootstrap $SUITE ($DEB_ARCH, minbase, +$INCLUDE) from $MIRROR ($MIRROR_FROM)$([ "$FOREIGN" -eq 1 ] && echo ' under qemu, ~3-4 min') ..."
  t=$(date +%s)
  mkdir -p "$ROOTFS.tmp"
  if ! debootstrap --arch="$DEB_ARCH" --variant=minbase --include="$INCLUDE" \
    "$SUITE" "$ROOTFS.tmp" "$MIRROR" >"$CACHE/debootstrap.log" 2>&1; then
    tail -n 30 "$CACHE/debootstrap.log" >&2
    [ -f "$ROOTFS.tmp/debootstrap/debootstrap.log" ] && tail -n 30 "$ROOTFS.tmp/debootstrap/debootstrap.log" >&2
    die "debootstrap failed; full log: $CACHE/debootstrap.log"
  fi
  # Trim what a Lambda image does not need (apt caches, docs); keep the Python stdlib whole.
  rm -rf "$ROOTFS.tmp"/var/cache/apt/archives/*.deb "$ROOTFS.tmp"/var/lib/apt/lists/* \
    "$ROOTFS.tmp"/usr/share/doc/* "$ROOTFS.tmp"/usr/share/man/* "$ROOTFS.tmp"/usr/share/info/* \
    "$ROOTFS.tmp"/var/log/*.log "$ROOTFS.tmp"/var/log/apt/*
  ln -sf /usr/share/zoneinfo/Etc/UTC "$ROOTFS.tmp/etc/localtime"
  mv "$ROOTFS.tmp" "$ROOTFS"
  {
    echo "$ROOTFS_SPEC"
    echo "python=$(chroot "$ROOTFS" /usr/bin/python3 -c 'import platform; print(platform.python_version(), platform.machine())')"
    echo "built=$(date -u +%FT%TZ) in $(since "$t")"
  } >"$CACHE/rootfs.stamp"
  say "debootstrap done in $(since "$t"): $(sed -n 2p "$CACHE/rootfs.stamp")"
else
  say "rootfs cached ($(sed -n 2p "$CACHE/rootfs.stamp"), $(sed -n 3p "$CACHE/rootfs.stamp"))"
fi

# --- 5. Runtime: awslambdaric (+ boto3) built for the *target* (cp313 / $WHEEL_PLATFORM) -------------
write_bootstrap() {
  mkdir -p "$ROOTFS/var/runtime" "$ROOTFS/var/task" "$ROOTFS/opt/python" "$ROOTFS/tmp"
  chmod 1777 "$ROOTFS/tmp"
  cat >"$ROOTFS/var/runtime/bootstrap" <<'BOOT'
#!/bin/sh
# Lambda runtime entry point (what aws-lambda-rie / SAM runs for a zip function, and the image ENTRYPOINT).
# Module search order as in AWS's python runtime: function code, layers, then the runtime's own packages.
export PYTHONPATH="/var/task:/opt/python/lib/python3.13/site-packages:/opt/python:/var/runtime${PYTHONPATH:+:$PYTHONPATH}"
export AWS_EXECUTION_ENV="${AWS_EXECUTION_ENV:-AWS_Lambda_python3.13}"
exec /usr/bin/python3 -m awslambdaric "${_HANDLER:-$1}"
BOOT
  chmod 755 "$ROOTFS/var/runtime/bootstrap"
}
RUNTIME_SPEC="awslambdaric==$RIC_VERSION ${BOTO3_SPEC} platform=$WHEEL_PLATFORM"
if [ ! -f "$CACHE/runtime.stamp" ] || [ "$(head -n1 "$CACHE/runtime.stamp")" != "$RUNTIME_SPEC" ]; then
  say "pip: awslambdaric==$RIC_VERSION ${BOTO3_SPEC:+and $BOTO3_SPEC }for cp313/$WHEEL_PLATFORM into /var/runtime ..."
  t=$(date +%s)
  rm -rf "$ROOTFS/var/runtime"
  mkdir -p "$ROOTFS/var/runtime"
  # shellcheck disable=SC2086  # BOTO3_SPEC may be empty
  if ! "$PY" -m pip install --disable-pip-version-check --no-warn-script-location --no-compile \
    --target "$ROOTFS/var/runtime" --python-version 3.13 --implementation cp --abi cp313 \
    --only-binary=:all: --platform "$WHEEL_PLATFORM" \
    "awslambdaric==$RIC_VERSION" $BOTO3_SPEC >"$CACHE/pip.log" 2>&1; then
    grep -v "is ignored: it is neither" "$CACHE/pip.log" | tail -n 20 >&2
    die "pip install for $WHEEL_PLATFORM failed (log: $CACHE/pip.log)"
  fi
  [ -d "$ROOTFS/var/runtime/awslambdaric" ] || die "awslambdaric did not install into $ROOTFS/var/runtime"
  rm -rf "$ROOTFS/var/runtime/bin"
  write_bootstrap
  # Byte-compile with the target's own python3.13: every invoke is a fresh container, so .pyc files that
  # are not in the image would be recompiled (under qemu) on each cold start.
  chroot "$ROOTFS" /usr/bin/python3 -m compileall -q /var/runtime >/dev/null || die "compileall failed"
  # Prove the native extension loads under the target's Python 3.13 (under qemu for a foreign arch).
  chroot "$ROOTFS" /usr/bin/env PYTHONPATH=/var/runtime /usr/bin/python3 -c \
    'import runtime_client, awslambdaric.bootstrap, platform; print("awslambdaric OK on", platform.machine(), platform.python_version())' \
    || die "awslambdaric does not import inside the rootfs"
  {
    echo "$RUNTIME_SPEC"
    find "$ROOTFS/var/runtime" -maxdepth 1 -name '*.dist-info' -printf '%f\n' | sed 's|\.dist-info$||' | sort | tr '\n' ' '
    echo
  } >"$CACHE/runtime.stamp"
  say "runtime installed in $(since "$t"): $(sed -n 2p "$CACHE/runtime.stamp")"
else
  write_bootstrap # cheap, and keeps /var/task, /opt/python present
  say "runtime cached ($(sed -n 2p "$CACHE/runtime.stamp"))"
fi

# --- 6. docker import ------------------------------------------------------------------------------
ENVS=(
  "LANG=C.UTF-8"
  "TZ=:/etc/localtime"
  "PATH=/var/lang/bin:/usr/local/bin:/usr/bin:/bin:/opt/bin"
  "LD_LIBRARY_PATH=/var/lang/lib:/lib64:/usr/lib64:/var/runtime:/var/runtime/lib:/var/task:/var/task/lib:/opt/lib"
  "LAMBDA_TASK_ROOT=/var/task"
  "LAMBDA_RUNTIME_DIR=/var/runtime"
)
STAMP="$(cat "$CACHE/rootfs.stamp" "$CACHE/runtime.stamp" "$ROOTFS/var/runtime/bootstrap" <(printf '%s\n' "${ENVS[@]}") | sha256sum | cut -c1-16)"
GOARCH=$([ "$ARCH" = arm64 ] && echo arm64 || echo amd64)
current="$(docker image inspect -f '{{index .Config.Labels "local.lambda-image.stamp"}} {{.Architecture}}' "$IMAGE" 2>/dev/null || true)"
if [ "$current" = "$STAMP $GOARCH" ]; then
  say "image $IMAGE is up to date (stamp $STAMP)"
else
  say "docker import -> $IMAGE ..."
  t=$(date +%s)
  changes=(-c 'WORKDIR /var/task' -c 'ENTRYPOINT ["/var/runtime/bootstrap"]' -c "LABEL local.lambda-image.stamp=$STAMP")
  for e in "${ENVS[@]}"; do changes+=(-c "ENV $e"); done
  tar -C "$ROOTFS" --numeric-owner --exclude='./proc/*' --exclude='./sys/*' --exclude='./dev/*' -c . |
    docker import --platform "linux/$GOARCH" "${changes[@]}" - "$IMAGE" >/dev/null
  say "imported in $(since "$t")"
  recorded="$(docker image inspect -f '{{.Architecture}}' "$IMAGE")"
  if [ "$recorded" != "$GOARCH" ]; then
    # Docker 20.10 ignores `import --platform`; sam local invoke would then refuse the image for a
    # $ARCH function ("does not match the specified platform"). Rewrite the recorded architecture.
    say "engine recorded $recorded, not $GOARCH; rewriting the image metadata (save | patch | load) ..."
    t=$(date +%s)
    old_id="$(docker image inspect -f '{{.Id}}' "$IMAGE")"
    docker save "$IMAGE" | python3 "$HERE/set-image-arch.py" "$ARCH" | docker load >/dev/null
    [ "$(docker image inspect -f '{{.Architecture}}' "$IMAGE")" = "$GOARCH" ] || die "could not set the image architecture"
    docker rmi "$old_id" >/dev/null 2>&1 || true
    say "metadata rewritten in $(since "$t")"
  fi
fi
# Untagged leftovers of earlier builds of this image (same repo, no tag) take disk space only.
docker image prune -f --filter "label=local.lambda-image.stamp" >/dev/null 2>&1 || true

docker image inspect -f "[lambda-image $ARCH] $IMAGE: {{.Architecture}}, {{.Size}} bytes, entrypoint {{.Config.Entrypoint}}, workdir {{.Config.WorkingDir}}" "$IMAGE"
say "ready in $(since "$T0") total"
