#!/usr/bin/env bash
# Installs (through apt, as root) and starts what the tests and the tool need on
# a Debian machine: Docker's engine, Podman's Docker-compatible API service,
# containerd + runc (copied into node containers), a static busybox (for
# FROM-scratch test images) and PostgreSQL (the example service's tests).
# Idempotent: what is installed or answering is left
# alone.
set -euo pipefail

PODMAN_SOCKET=/run/podman/podman.sock
# Podman's default ulimits do not fit small VMs ("error setting rlimit"):
# the system-wide containers.conf sets ones that do, for the API service and
# for the podman CLI that kind runs. An existing containers.conf is left
# alone (add the same default_ulimits line to it if containers fail to start).
PODMAN_CONF=/etc/containers/containers.conf

log() { printf '[engines] %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v podman >/dev/null 2>&1 || missing+=(podman)
command -v containerd >/dev/null 2>&1 || missing+=(containerd)
command -v runc >/dev/null 2>&1 || missing+=(runc)
command -v curl >/dev/null 2>&1 || missing+=(curl)
# Offline images (kind node image, PostgreSQL, Redis) start from debootstrap.
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
dpkg -s busybox-static >/dev/null 2>&1 || missing+=(busybox-static)
# The example DataStorage's own tests start a throwaway PostgreSQL server.
ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || missing+=(postgresql)
if [ ${#missing[@]} -gt 0 ]; then
  log "installing: ${missing[*]}"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

answers() { curl -sf --max-time 3 --unix-socket "$1" http://localhost/_ping >/dev/null 2>&1; }

wait_for() {
  local socket=$1 what=$2
  for _ in $(seq 1 60); do
    answers "$socket" && return 0
    sleep 0.5
  done
  log "$what did not answer on $socket within 30s"
  return 1
}

if ! answers /var/run/docker.sock; then
  log "starting dockerd"
  as_root bash -c 'nohup /usr/sbin/dockerd >/var/log/dockerd.log 2>&1 &'
  if ! wait_for /var/run/docker.sock dockerd; then
    # A stale bridge ("could not find bridge docker0") clears on a restart.
    as_root pkill -x dockerd || true
    sleep 1
    as_root bash -c 'nohup /usr/sbin/dockerd >/var/log/dockerd.log 2>&1 &'
    wait_for /var/run/docker.sock dockerd || { tail -20 /var/log/dockerd.log >&2; exit 1; }
  fi
fi

if [ ! -e "$PODMAN_CONF" ]; then
  as_root mkdir -p /etc/containers
  as_root tee "$PODMAN_CONF" >/dev/null <<'CONF'
# Written by kind-e2e's scripts/engines.sh: default ulimits that fit this host.
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
CONF
elif ! grep -q default_ulimits "$PODMAN_CONF"; then
  log "warning: $PODMAN_CONF sets no default_ulimits; if Podman containers fail with" \
    "\"error setting rlimit\", add under [containers]:" \
    'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]'
fi
# kind's podman nodes bind-mount /lib/modules, and Podman refuses a missing
# source; a host without kernel modules has none.
[ -d /lib/modules ] || as_root mkdir -p /lib/modules

if ! answers "$PODMAN_SOCKET"; then
  log "starting podman's API service on $PODMAN_SOCKET"
  as_root mkdir -p /run/podman
  as_root env CONTAINERS_CONF="$PODMAN_CONF" bash -c \
    "nohup podman system service --time=0 unix://$PODMAN_SOCKET >/var/log/podman-service.log 2>&1 &"
  wait_for "$PODMAN_SOCKET" podman || { tail -20 /var/log/podman-service.log >&2; exit 1; }
fi

log "docker and podman answer"
