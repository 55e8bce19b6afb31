#!/usr/bin/env bash
# End-to-end test of the Debian package under a real systemd: boots Debian 12 (bookworm)
# in systemd-nspawn, installs the .deb with apt, drives the service with systemctl and a
# WebSocket client on the host, then removes and purges the package.
#
#   tests/systemd_e2e/run.sh path/to/tornado-ws-runner_<version>_<arch>.deb
#
# Run it as root on a Debian or Ubuntu host; it apt-gets what it misses (systemd-container,
# debootstrap, zstd). The container shares the host's network namespace, so ports 8000
# and 9100 on the host must be free. It takes a couple of minutes once the root exists.
#
# The root filesystem: debootstrap (minbase plus what a systemd boot and `apt install
# ./x.deb` need), made once and kept as $E2E_CACHE_DIR/bookworm-root.tar.zst; every run
# unpacks it into a fresh folder under /var/tmp and removes it at the end. The package's
# dependencies come from the Debian mirror this host's apt uses, so a missing Depends shows.
#
# Environment:
#   E2E_CACHE_DIR   where the root tarball is kept (/var/cache/tornado-ws-runner-ci)
#   E2E_REBUILD=1   make the root tarball anew even when it exists
#   E2E_MIRROR      the Debian mirror (default: the one this host's apt uses for bookworm)
#   E2E_PYTHON      the Python for the WebSocket client; it needs tornado (default: the
#                   checkout's .venv/bin/python, else python3)
#   E2E_SOAK        seconds to leave the service running before the later checks, e.g. 40
#                   to see the watchdog (WatchdogSec=30s) fed (0)
#   E2E_PREINSTALL  packages to apt-get install in the container before the .deb (none),
#                   to try the package on a fuller system than minbase
#   E2E_KEEP=1      keep the unpacked root and the logs (the container is stopped anyway)
# dpkg-query formats are ${Field} in single quotes on purpose.
# shellcheck disable=SC2016
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
PKG=tornado-ws-runner
SUITE=bookworm
CACHE_DIR=${E2E_CACHE_DIR:-/var/cache/tornado-ws-runner-ci}
TARBALL=$CACHE_DIR/$SUITE-root.tar.zst
# minbase has apt and dpkg; these make it boot (systemd as init, dbus for systemctl and
# logind) and let apt fetch over https.
INCLUDE=systemd,systemd-sysv,dbus,ca-certificates
STAGE=/var/tmp/$PKG-e2e # inside the container: /tmp there is a tmpfs systemd mounts at boot
PORT=8000
MGMT_PORT=9100
TOKEN=demo-token
PATH_IN=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

WORK=""         # this run's folder: root/ (the unpacked tarball) and logs/
ROOT=""
NSPAWN_PID=""
INIT_PID=""
CEXEC_PID=""
T0=$EPOCHREALTIME
STEP=0

since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'; }
say() { printf '[%6s s] %s\n' "$(since "$T0")" "$*"; }
pass() {
  STEP=$((STEP + 1))
  say "ok $STEP - $*"
}

# In the container: every command goes through nsenter into all of init's namespaces,
# with a clean environment, bounded in time. It runs as a background job the shell waits
# for, so a signal to this script runs the trap at once instead of after the command;
# cleanup then ends the command (CEXEC_PID, the `timeout`) before it stops the container.
cexec() {
  local limit=$1 rc=0
  shift
  timeout -k 5 "$limit" nsenter -t "$INIT_PID" -a \
    env -i PATH="$PATH_IN" LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive TERM=dumb \
    SYSTEMD_PAGER= SYSTEMD_COLORS=0 "$@" &
  CEXEC_PID=$!
  wait "$CEXEC_PID" || rc=$?
  CEXEC_PID=""
  return "$rc"
}
c() { cexec 60 "$@"; }
csh() { cexec 60 sh -c "$1"; }

container_alive() { [ -n "$INIT_PID" ] && [ -n "$NSPAWN_PID" ] && alive "$NSPAWN_PID"; }

fail() {
  say "FAIL: $*" >&2
  if container_alive; then
    {
      echo "--- systemctl status $PKG"
      c systemctl status --no-pager --lines=0 "$PKG" 2>&1 || true
      echo "--- journalctl -u $PKG (last 40 lines)"
      c journalctl -u "$PKG" -n 40 --no-pager 2>&1 || true
      echo "--- journalctl -p warning (last 20 lines)"
      c journalctl -b -p warning -n 20 --no-pager 2>&1 || true
    } >&2
  elif [ -n "$WORK" ] && [ -s "$WORK/logs/nspawn.log" ]; then
    echo "--- systemd-nspawn's output (last 40 lines)" >&2
    tail -n 40 "$WORK/logs/nspawn.log" >&2
  fi
  exit 1
}

# A process that exists and is not a zombie (nspawn is our child: it stays a zombie
# until `wait`, and kill -0 succeeds on zombies).
alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}

wait_exit() { # PID SECONDS: true when PID has exited within SECONDS
  local i
  for ((i = 0; i < $2 * 5; i++)); do
    alive "$1" || return 0
    sleep 0.2
  done
  ! alive "$1"
}

stop_container() {
  [ -n "$NSPAWN_PID" ] || return 0
  local pid=$NSPAWN_PID t=$EPOCHREALTIME rc=0
  if alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true # nspawn asks init to power off
    if ! wait_exit "$pid" 60; then
      say "systemd-nspawn ($pid) still runs 60 s after SIGTERM; a second SIGTERM" >&2
      kill -TERM "$pid" 2>/dev/null || true # nspawn then terminates the container at once
      if ! wait_exit "$pid" 30; then
        say "systemd-nspawn ($pid) did not exit after two SIGTERMs; leaving $WORK" >&2
        return 1
      fi
    fi
  fi
  wait "$pid" 2>/dev/null || rc=$?
  NSPAWN_PID=""
  INIT_PID=""
  say "container stopped in $(since "$t") s (systemd-nspawn exit status $rc)"
}

cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP
  exec 1>&7 2>&8 # the trap may fire inside a command whose output goes to a log
  if [ -n "$CEXEC_PID" ] && alive "$CEXEC_PID"; then
    # timeout passes SIGTERM on to nsenter (and SIGCONT, should the container's shutdown
    # have stopped it); what nsenter started dies with the container.
    kill -TERM "$CEXEC_PID" 2>/dev/null || true
    wait_exit "$CEXEC_PID" 10 || say "the command in the container ($CEXEC_PID) still runs" >&2
  fi
  stop_container || rc=1
  if [ -n "$NSPAWN_PID" ]; then
    :   # still running: its root stays
  elif [ -n "$WORK" ] && [ -d "$WORK" ]; then
    if [ "${E2E_KEEP:-0}" = 1 ]; then
      say "kept $WORK"
    elif grep -q " $WORK/" /proc/self/mounts; then
      say "something is still mounted under $WORK; left in place" >&2
      rc=1
    else
      rm -rf --one-file-system "$WORK"
    fi
  fi
  # nspawn leaves its mount-propagation folder behind when the host's /run is no tmpfs.
  [ -z "$WORK" ] || rmdir "/run/systemd/nspawn/propagate/$(basename "$WORK")" 2>/dev/null || true
  [ -z "${BUILD_TMP:-}" ] || rm -rf --one-file-system "$BUILD_TMP"
  if [ "$rc" = 0 ]; then
    say "PASS: all $STEP checks"
    echo "systemd_e2e: $STEP passed, 0 failed"
  else
    echo "systemd_e2e: $STEP passed, 1 failed"
  fi
  exit "$rc"
}
exec 7>&1 8>&2 # this script's own stdout and stderr, for cleanup
trap cleanup EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

# --- arguments and host tools ------------------------------------------------------

[ $# = 1 ] || { echo "usage: $0 path/to/${PKG}_<version>_<arch>.deb" >&2; exit 2; }
DEB=$(readlink -f -- "$1")
[ -f "$DEB" ] || fail "no such file: $1"
[ "$(id -u)" = 0 ] || fail "must run as root (debootstrap, systemd-nspawn, nsenter)"
name=$(dpkg-deb -f "$DEB" Package) || fail "$DEB is not a .deb"
[ "$name" = "$PKG" ] || fail "$DEB is package $name, not $PKG"

missing=()
command -v systemd-nspawn >/dev/null || missing+=(systemd-container)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v zstd >/dev/null || missing+=(zstd)
command -v nsenter >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  say "installing on the host: ${missing[*]}"
  timeout 300 apt-get update -qq || fail "apt-get update on the host"
  DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null || fail "apt-get install ${missing[*]} on the host"
fi

if [ -n "${E2E_PYTHON:-}" ]; then
  PY=$E2E_PYTHON
elif [ -x "$REPO/.venv/bin/python" ]; then
  PY=$REPO/.venv/bin/python
else
  PY=python3
fi
"$PY" -c 'import tornado.websocket' 2>/dev/null \
  || fail "$PY cannot import tornado (make the checkout's .venv with scripts/test, or set E2E_PYTHON)"

port_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in $PORT $MGMT_PORT; do
  if port_taken "$p"; then fail "127.0.0.1:$p is taken on the host; the container shares its network"; fi
done

# The host's apt sources: the first URI serving SUITE (one-line .list and deb822 .sources).
apt_uri() {
  local f
  for f in /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources; do
    [ -r "$f" ] || continue
    case $f in
    *.sources)
      awk -v suite="$1" '
        BEGIN { RS = ""; FS = "\n" }
        {
          types = ""; uris = ""; suites = ""; enabled = "yes"
          for (i = 1; i <= NF; i++) {
            line = $i
            if (line ~ /^#/) continue
            key = tolower(line); sub(/:.*/, "", key)
            val = line; sub(/^[^:]*:[ \t]*/, "", val)
            if (key == "types") types = val
            else if (key == "uris") uris = val
            else if (key == "suites") suites = val
            else if (key == "enabled") enabled = tolower(val)
          }
          if (enabled == "no" || (" " types " ") !~ / deb /) next
          n = split(suites, s, /[ \t]+/)
          for (j = 1; j <= n; j++) if (s[j] == suite) { split(uris, u, /[ \t]+/); print u[1]; exit }
        }' "$f"
      ;;
    *)
      awk -v suite="$1" '
        { sub(/#.*/, ""); gsub(/\[[^]]*\]/, "") }
        $1 == "deb" && $3 == suite { print $2; exit }' "$f"
      ;;
    esac
  done | head -n 1
}

MIRROR=${E2E_MIRROR:-$(apt_uri "$SUITE")}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
MIRROR_UPDATES=$(apt_uri "$SUITE-updates")
MIRROR_SECURITY=$(apt_uri "$SUITE-security")
say "mirror $MIRROR${MIRROR_SECURITY:+, security $MIRROR_SECURITY}; client python $PY"

# --- the root tarball, made once ------------------------------------------------------

mkdir -p "$CACHE_DIR"
exec 9>"$CACHE_DIR/.lock"
flock -w 900 9 || fail "another run holds $CACHE_DIR/.lock for 15 minutes"
if [ "${E2E_REBUILD:-0}" = 1 ] || [ ! -s "$TARBALL" ]; then
  t=$EPOCHREALTIME
  BUILD_TMP=$(mktemp -d /var/tmp/$PKG-debootstrap.XXXXXX)
  say "debootstrap $SUITE ($INCLUDE) into $BUILD_TMP"
  timeout 1200 debootstrap --variant=minbase --include="$INCLUDE" \
    "$SUITE" "$BUILD_TMP/root" "$MIRROR" >"$BUILD_TMP/debootstrap.log" 2>&1 || {
    tail -n 30 "$BUILD_TMP/debootstrap.log" >&2
    fail "debootstrap $SUITE from $MIRROR"
  }
  rm -f "$BUILD_TMP"/root/var/cache/apt/archives/*.deb
  tar --numeric-owner --xattrs --xattrs-include='*' --acls -C "$BUILD_TMP/root" -cf - . \
    | zstd -q -f -T0 -3 -o "$TARBALL.tmp" || { rm -f "$TARBALL.tmp"; fail "packing $TARBALL"; }
  mv -f "$TARBALL.tmp" "$TARBALL"
  rm -rf --one-file-system "$BUILD_TMP"
  BUILD_TMP=""
  pass "root filesystem made and cached as $TARBALL ($(du -h "$TARBALL" | cut -f1), $(since "$t") s)"
fi
exec 9>&-

# --- unpack, stage, boot ---------------------------------------------------------------

WORK=$(mktemp -d /var/tmp/$PKG-e2e.XXXXXX)
ROOT=$WORK/root
mkdir -p "$ROOT" "$WORK/logs"
t=$EPOCHREALTIME
zstd -q -dc "$TARBALL" | tar --numeric-owner --xattrs --xattrs-include='*' --acls -xpf - -C "$ROOT" \
  || fail "unpacking $TARBALL"
{
  echo "deb $MIRROR $SUITE main"
  [ -z "$MIRROR_UPDATES" ] || echo "deb $MIRROR_UPDATES $SUITE-updates main"
  [ -z "$MIRROR_SECURITY" ] || echo "deb $MIRROR_SECURITY $SUITE-security main"
} >"$ROOT/etc/apt/sources.list"
mkdir -p "$ROOT$STAGE"
chmod 0755 "$ROOT$STAGE"
install -m 0644 "$DEB" "$ROOT$STAGE/"
DEB_IN=$STAGE/$(basename "$DEB")
say "unpacked into $ROOT in $(since "$t") s; staged $DEB_IN"

t=$EPOCHREALTIME
boot_start=$SECONDS
# No --network-veth/--private-network: the container uses the host's network, so the
# host reaches the service on 127.0.0.1 and apt in the container reaches the mirror.
# setsid (which execs, keeping the pid, as a background job leads no process group): a
# Ctrl-C to this script's process group must not shut the container down under a running
# command; the trap stops it.
setsid systemd-nspawn --register=no --keep-unit --console=pipe --machine="$(basename "$WORK")" \
  -D "$ROOT" -b </dev/null >"$WORK/logs/nspawn.log" 2>&1 &
NSPAWN_PID=$!

# init: nspawn's child that runs systemd (nspawn is its subreaper).
for ((i = 0; i < 100; i++)); do
  alive "$NSPAWN_PID" || fail "systemd-nspawn exited during boot"
  for pid in $(ps -o pid= --ppid "$NSPAWN_PID" 2>/dev/null); do
    if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = systemd ]; then INIT_PID=$pid; break 2; fi
  done
  sleep 0.2
done
[ -n "$INIT_PID" ] || fail "no systemd child of systemd-nspawn ($NSPAWN_PID) within 20 s"

state=""
for ((i = 0; i < 30; i++)); do
  alive "$NSPAWN_PID" || fail "systemd-nspawn exited during boot"
  state=$(c timeout 30 systemctl is-system-running --wait 2>/dev/null) || true
  case $state in
  running | degraded) break ;;
  offline | initializing | starting | "") sleep 1 ;; # the manager is not answering yet
  *) fail "the container's systemd is $state" ;;
  esac
  ((SECONDS - boot_start < 120)) || break
done
case $state in
running | degraded) ;;
*) fail "the container's systemd is '${state:-not answering}' after $(since "$t") s" ;;
esac
pass "container booted in $(since "$t") s: systemd init pid $INIT_PID (host), system $state"
if [ "$state" = degraded ]; then c systemctl --failed --no-pager --plain || true; fi

# --- install -----------------------------------------------------------------------------

t=$EPOCHREALTIME
cexec 300 apt-get update -q >"$WORK/logs/apt-update.log" 2>&1 || {
  tail -n 20 "$WORK/logs/apt-update.log" >&2
  fail "apt-get update in the container"
}
if [ -n "${E2E_PREINSTALL:-}" ]; then
  # shellcheck disable=SC2086 # a list of package names
  cexec 600 apt-get install -y -q $E2E_PREINSTALL >"$WORK/logs/apt-preinstall.log" 2>&1 || {
    tail -n 20 "$WORK/logs/apt-preinstall.log" >&2
    fail "apt-get install -y $E2E_PREINSTALL (E2E_PREINSTALL)"
  }
  pass "preinstalled $E2E_PREINSTALL (E2E_PREINSTALL)"
fi
cexec 600 apt-get install -y "$DEB_IN" >"$WORK/logs/apt-install.log" 2>&1 || {
  tail -n 40 "$WORK/logs/apt-install.log" >&2
  fail "apt-get install -y $DEB_IN"
}
status=$(c dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null) || true
[ "$status" = "install ok installed" ] || fail "dpkg status of $PKG after install: '$status'"
pass "apt-get install -y $DEB_IN ($(since "$t") s; $(c dpkg-query -W -f='${Version}' "$PKG"))"

bin=$(csh "command -v $PKG") || fail "no $PKG command on PATH"
c "$bin" --help >/dev/null 2>&1 || fail "$bin --help fails"
pass "command -v $PKG: $bin (runs)"

for unit in "$PKG.service" "$PKG@.service"; do
  c test -f "/lib/systemd/system/$unit" || fail "no /lib/systemd/system/$unit"
done
pass "units in /lib/systemd/system: $PKG.service, $PKG@.service"

verify=$(c systemd-analyze verify "/lib/systemd/system/$PKG.service" 2>&1) \
  || fail "systemd-analyze verify $PKG.service: $verify"
pass "systemd-analyze verify $PKG.service${verify:+ (said: $verify)}"

conffiles=$(c dpkg-query -W -f='${Conffiles}\n' "$PKG") || fail "dpkg-query Conffiles"
is_conffile() { printf '%s\n' "$conffiles" | awk '{print $1}' | grep -qxF -- "$1"; }
for f in runner.yaml config.yaml; do
  c test -f "/etc/$PKG/$f" || fail "no /etc/$PKG/$f"
  is_conffile "/etc/$PKG/$f" || fail "/etc/$PKG/$f is not a conffile; conffiles: $conffiles"
done
c test -d "/etc/$PKG/handlers" || fail "no /etc/$PKG/handlers/"
handlers=$(c find "/etc/$PKG/handlers" -type f) || fail "listing /etc/$PKG/handlers"
[ -n "$handlers" ] || fail "/etc/$PKG/handlers/ is empty"
for f in $handlers; do
  is_conffile "$f" || fail "$f is not a conffile; conffiles: $conffiles"
done
pass "/etc/$PKG/{runner.yaml,config.yaml,handlers/} present and conffiles" \
  "(handlers: $(printf '%s\n' "$handlers" | tr '\n' ' '))"

c test -f "/usr/share/doc/$PKG/README.md" || {
  extra=$(c ls "/usr/share/doc/$PKG" 2>&1 | tr '\n' ' ') || true
  fail "no /usr/share/doc/$PKG/README.md (the folder holds: $extra)"
}
pass "/usr/share/doc/$PKG/README.md present"

# --- run -----------------------------------------------------------------------------------

t=$EPOCHREALTIME
c systemctl enable --now "$PKG" >"$WORK/logs/enable.log" 2>&1 || {
  cat "$WORK/logs/enable.log" >&2
  fail "systemctl enable --now $PKG"
}
active=""
for ((i = 0; i < 60; i++)); do
  active=$(c systemctl is-active "$PKG" 2>/dev/null) || true
  case $active in
  active | failed) break ;;
  esac
  sleep 0.5
done
[ "$active" = active ] || fail "$PKG is '$active', not active, after enable --now"
c systemctl is-enabled -q "$PKG" || fail "$PKG is not enabled after enable --now"
main_pid=$(c systemctl show -p MainPID --value "$PKG")
pass "systemctl enable --now $PKG: enabled, active in $(since "$t") s (MainPID $main_pid)"

"$PY" "$HERE/ws_check.py" echo "ws://127.0.0.1:$PORT/?token=$TOKEN" \
  || fail "WebSocket echo on ws://127.0.0.1:$PORT/?token=$TOKEN"
pass "WebSocket echo from the host on ws://127.0.0.1:$PORT/?token=$TOKEN"

"$PY" "$HERE/ws_check.py" reject "ws://127.0.0.1:$PORT/" \
  || fail "a WebSocket client without the token was not refused with 1008"
pass "a WebSocket client without the token is refused with 1008"

reply=$(c tornado-ws-runner-client "ws://127.0.0.1:$PORT/?token=$TOKEN" echo \
  --payload '{"from":"client"}') || fail "tornado-ws-runner-client echo in the container failed"
case $reply in
  *'"body":{"from":"client"}'*) ;;
  *) fail "tornado-ws-runner-client echo printed '$reply'" ;;
esac
pass "tornado-ws-runner-client (packaged) calls echo: $reply"

if [ "${E2E_SOAK:-0}" -gt 0 ]; then
  say "leaving $PKG running for $E2E_SOAK s (E2E_SOAK)"
  sleep "$E2E_SOAK"
  "$PY" "$HERE/ws_check.py" echo "ws://127.0.0.1:$PORT/?token=$TOKEN" \
    || fail "WebSocket echo after $E2E_SOAK s"
  pass "still serving after $E2E_SOAK s"
fi

journal() { c journalctl -u "$PKG" -b --no-pager -o cat 2>/dev/null; }
count() { journal | grep -cF -- "$1" || true; }

before=$(count "reloaded ")
c systemctl reload "$PKG" || fail "systemctl reload $PKG"
seen=""
for ((i = 0; i < 50; i++)); do
  if [ "$(count "reloaded ")" -gt "$before" ]; then seen=1; break; fi
  sleep 0.2
done
[ -n "$seen" ] || fail "no new 'reloaded ...' line in the journal within 10 s of systemctl reload"
[ "$(c systemctl is-active "$PKG")" = active ] || fail "$PKG is not active after the reload"
[ "$(c systemctl show -p MainPID --value "$PKG")" = "$main_pid" ] \
  || fail "$PKG's MainPID changed over the reload (a restart, not a reload)"
pass "systemctl reload $PKG: journal says '$(journal | grep -F "reloaded " | tail -n 1)', same MainPID"

"$PY" "$HERE/ws_check.py" echo "ws://127.0.0.1:$PORT/?token=$TOKEN" \
  || fail "WebSocket echo after the reload"
pass "WebSocket echo after the reload"

restarts=$(c systemctl show -p NRestarts --value "$PKG")
[ "$restarts" = 0 ] || fail "$PKG was restarted $restarts times"
pass "no restarts (NRestarts=0)"

# --- secrets: a root-only token file -----------------------------------------------------
# Named directly, the service's own user cannot read it: the unit's --check (its
# ExecStartPre, run as that user) refuses to start, naming the key. Through
# LoadCredential= (systemd reads it as root), runner.yaml takes it from
# $CREDENTIALS_DIRECTORY and the management port wants it.
SECRET=s3cret-e2e-token
csh "install -d -m 0700 /etc/$PKG/secrets && umask 077 && printf '%s\n' $SECRET >/etc/$PKG/secrets/token" \
  || fail "writing /etc/$PKG/secrets/token"
csh "sed -i 's|^  token_file: null|  token_file: /etc/$PKG/secrets/token|' /etc/$PKG/runner.yaml" \
  || fail "pointing management.token_file at the secret"
if c systemctl restart "$PKG" 2>/dev/null; then
  fail "$PKG started although its user cannot read /etc/$PKG/secrets/token"
fi
journal | grep -F "management.token_file" | grep -qF "Permission denied" \
  || fail "the journal does not name management.token_file and the permission error"
pass "a root-only token_file named directly: the unit's --check refuses, naming management.token_file"
csh "mkdir -p /etc/systemd/system/$PKG.service.d && printf '[Service]\nLoadCredential=token:/etc/$PKG/secrets/token\n' >/etc/systemd/system/$PKG.service.d/credentials.conf" \
  || fail "writing the LoadCredential= drop-in"
csh "sed -i 's|^  token_file: /etc/$PKG/secrets/token|  token_file: \"\${CREDENTIALS_DIRECTORY}/token\"|' /etc/$PKG/runner.yaml" \
  || fail "pointing management.token_file at the credential"
c systemctl daemon-reload || fail "systemctl daemon-reload"
c systemctl reset-failed "$PKG" || true
c systemctl restart "$PKG" || fail "systemctl restart $PKG with the credential"
code() { curl -s -o /dev/null -w '%{http_code}' --max-time 5 "$@" "http://127.0.0.1:$MGMT_PORT/@connections" || true; }
for ((i = 0; i < 50; i++)); do
  [ "$(code)" = 401 ] && break
  sleep 0.2
done
[ "$(code)" = 401 ] || fail "the management port does not ask for the token (got $(code))"
[ "$(code -H "Authorization: Bearer $SECRET")" = 200 ] \
  || fail "the management port refuses the credential's token"
pass "the token through LoadCredential=: /@connections answers 401 without it, 200 with it"

c systemctl stop "$PKG" || fail "systemctl stop $PKG"
show=$(c systemctl show -p ExecMainStatus -p Result "$PKG" | sort | tr '\n' ' ')
[ "$show" = "ExecMainStatus=0 Result=success " ] || fail "after systemctl stop: $show"
seen=""
for ((i = 0; i < 50; i++)); do
  if [ "$(count "stopped:")" -gt 0 ]; then seen=1; break; fi
  sleep 0.2
done
[ -n "$seen" ] || fail "no 'stopped:' line in the journal after systemctl stop"
! port_taken "$PORT" || fail "127.0.0.1:$PORT still answers after systemctl stop"
pass "systemctl stop $PKG: ${show% }; journal says '$(journal | grep -F "stopped:" | tail -n 1)'"

# --- remove, purge -------------------------------------------------------------------------

cexec 300 apt-get remove -y "$PKG" >"$WORK/logs/apt-remove.log" 2>&1 || {
  tail -n 30 "$WORK/logs/apt-remove.log" >&2
  fail "apt-get remove -y $PKG"
}
status=$(c dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null) || true
[ "$status" = "deinstall ok config-files" ] || fail "dpkg status after remove: '$status'"
for f in runner.yaml config.yaml; do
  c test -f "/etc/$PKG/$f" || fail "/etc/$PKG/$f is gone after apt-get remove"
done
! csh "command -v $PKG" >/dev/null || fail "$PKG is still on PATH after apt-get remove"
! c test -e "/lib/systemd/system/$PKG.service" || fail "$PKG.service is still there after remove"
pass "apt-get remove -y $PKG: /etc/$PKG kept, program and units gone ($status)"

cexec 300 apt-get purge -y "$PKG" >"$WORK/logs/apt-purge.log" 2>&1 || {
  tail -n 30 "$WORK/logs/apt-purge.log" >&2
  fail "apt-get purge -y $PKG"
}
if c test -e "/etc/$PKG"; then
  fail "/etc/$PKG is still there after purge: $(c find "/etc/$PKG" | tr '\n' ' ')"
fi
status=$(c dpkg-query -W -f='${Status}' "$PKG" 2>/dev/null) || true
case $status in
"" | "unknown ok not-installed" | "purge ok not-installed") ;;
*) fail "dpkg status after purge: '$status'" ;;
esac
leftover=$(csh "ls -d /etc/systemd/system/*.wants/$PKG*.service /var/lib/systemd/deb-systemd-helper-enabled/$PKG*.service /var/lib/systemd/deb-systemd-helper-enabled/*.wants/$PKG*.service 2>/dev/null" || true)
[ -z "$leftover" ] || fail "systemd links left after purge: $leftover"
pass "apt-get purge -y $PKG: /etc/$PKG and the enablement links gone"

say "checks done in $(since "$T0") s; stopping the container"
