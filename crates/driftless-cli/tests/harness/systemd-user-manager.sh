#!/bin/sh
# A private `systemd --user` manager for driftless's service tests (tests/systemd_user_e2e.rs).
# Not a test double: it runs the machine's real systemd, only fenced off from the host.
#
# Run it as root inside a private mount namespace; it ends by exec'ing the manager:
#   SDU_ROOT=$(mktemp -d) unshare -m --propagation private tests/harness/systemd-user-manager.sh &
# Clients then use HOME=$SDU_ROOT/home XDG_RUNTIME_DIR=$SDU_ROOT/run
# XDG_CONFIG_HOME=$SDU_ROOT/home/.config and wait until `systemctl --user show -p Version` answers.
# WITH_JOURNALD=1 also starts a private journald; read it with
# `journalctl -D $SDU_ROOT/journal/journal` (or enter the namespace: `nsenter -t <pid> -m`).
#
# Why each step:
# - PID 1 of a test machine or container is usually not systemd, and `systemd --user` refuses to
#   start unless /run/systemd/system exists (sd_booted()). We create it on a tmpfs that only this
#   mount namespace sees.
# - A root `systemd --user` takes over the cgroup it starts in; in the root cgroup it would move
#   every process of the machine (PID 1 included) into its init.scope. So it first moves itself into
#   a dedicated cgroup `sdu-<pid>` in every mounted hierarchy (cgroup v2, or v1's named systemd one).
#   The caller removes those folders once the manager has exited (the test's Drop does).
# - Without journald the services' stdout goes nowhere; /run/log is bound to $SDU_ROOT/journal
#   so a private journald writes there and the host's journal is untouched.
set -eu
: "${SDU_ROOT:?set SDU_ROOT to an empty folder (the manager's HOME, runtime dir and journal)}"

cgroup="sdu-$$"
for hierarchy in /sys/fs/cgroup/unified /sys/fs/cgroup/systemd /sys/fs/cgroup; do
  # Only hierarchy roots: v2 (unified, or /sys/fs/cgroup itself) and v1's named systemd one.
  [ -e "$hierarchy/cgroup.procs" ] || continue
  # On a hybrid layout /sys/fs/cgroup is a tmpfs of v1 controllers; `unified` is the v2 root.
  if [ "$hierarchy" = /sys/fs/cgroup ] && [ -d /sys/fs/cgroup/unified ]; then continue; fi
  mkdir -p "$hierarchy/$cgroup"
  echo $$ > "$hierarchy/$cgroup/cgroup.procs"
done

mkdir -p /run/systemd
mount -t tmpfs tmpfs /run/systemd
mkdir -p /run/systemd/system

mkdir -p "$SDU_ROOT/journal" "$SDU_ROOT/home/.config/systemd/user" /run/log
mkdir -p -m 700 "$SDU_ROOT/run"
mount --bind "$SDU_ROOT/journal" /run/log

systemd_dir=/lib/systemd
[ -x "$systemd_dir/systemd" ] || systemd_dir=/usr/lib/systemd
if [ -n "${WITH_JOURNALD:-}" ]; then
  "$systemd_dir/systemd-journald" &
fi
export HOME="$SDU_ROOT/home" XDG_RUNTIME_DIR="$SDU_ROOT/run"
exec "$systemd_dir/systemd" --user
