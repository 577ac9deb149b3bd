#!/usr/bin/env bash
# A real single-node Slurm on this machine (Debian's munge, slurmctld, slurmd) for the cluster tests.
#   bash tests/slurm/local_slurm.sh start   # install if needed, configure, start; waits for an idle node
#   bash tests/slurm/local_slurm.sh stop    # stops only the daemons this script started (by their pid files),
#                                           # waits until they have exited, and puts back what start changed
#                                           # (slurm.conf, munge key); a start that fails undoes itself the same way
# Needs root (apt-get, /etc). State lives in /var/spool/effzoo-slurm.
# Why stop restores: snakemake-executor-plugin-slurm runs `scontrol show config` when snakemake starts; with a
# slurm.conf naming a controller that is not running, that call waits 9 s on every snakemake call.
set -Eeuo pipefail
STATE=${EFFZOO_SLURM_STATE:-/var/spool/effzoo-slurm}
CONF_DIR=${EFFZOO_SLURM_CONF_DIR:-/etc/slurm}
MARK="# written by effzoo tests/slurm/local_slurm.sh start; removed by its stop"
POLICY=/usr/sbin/policy-rc.d

install() {
  if command -v slurmctld >/dev/null && command -v munged >/dev/null && command -v sbatch >/dev/null; then return; fi
  if [ ! -e "$POLICY" ]; then  # no stock daemons while the packages install; marked, so stop removes it too
    printf '#!/bin/sh\n%s\nexit 101\n' "$MARK" > "$POLICY" && chmod +x "$POLICY"
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq munge slurmctld slurmd slurm-client >/dev/null
  remove_policy
}

remove_policy() {
  if [ -e "$POLICY" ] && grep -qF "$MARK" "$POLICY"; then rm -f "$POLICY"; fi
}

configure() {
  mkdir -p "$STATE"/ctld "$STATE"/d /var/log/slurm "$CONF_DIR" /run/munge /var/lib/munge /var/log/munge
  if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    touch "$STATE/created-munge-key"
  fi
  chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
  chmod 0400 /etc/munge/munge.key
  local host node mem
  host=$(hostname)
  node=$(slurmd -C | head -1)
  mem=$(echo "$node" | sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p')
  node=$(echo "$node" | sed "s/RealMemory=[0-9]*/RealMemory=$((mem * 95 / 100))/")
  # a slurm.conf that was there before (a site's own) is kept aside and put back by stop
  if [ -e "$CONF_DIR/slurm.conf" ] && ! head -1 "$CONF_DIR/slurm.conf" | grep -qF "$MARK" \
      && [ ! -e "$STATE/slurm.conf.before" ]; then
    cp -p "$CONF_DIR/slurm.conf" "$STATE/slurm.conf.before"
  fi
  cat > "$CONF_DIR/slurm.conf" <<CONF
$MARK
ClusterName=effzoo
SlurmctldHost=$host
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
$node
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  install
  configure
  if [ ! -e "$STATE/munged.pid" ] || ! kill -0 "$(cat "$STATE/munged.pid")" 2>/dev/null; then
    runuser -u munge -- munged --pid-file=/run/munge/effzoo-munged.pid
    cp /run/munge/effzoo-munged.pid "$STATE/munged.pid"
  fi
  [ -e "$STATE/slurmctld.pid" ] && kill -0 "$(cat "$STATE/slurmctld.pid")" 2>/dev/null || slurmctld -c
  [ -e "$STATE/slurmd.pid" ] && kill -0 "$(cat "$STATE/slurmd.pid")" 2>/dev/null || slurmd
  for _ in $(seq 60); do
    if [ "$(sinfo -h -o %t 2>/dev/null | head -1)" = "idle" ]; then echo "slurm: node idle"; return 0; fi
    sleep 1
  done
  echo "slurm: node did not become idle; see /var/log/slurm/" >&2
  sinfo >&2 || true
  return 1
}

wait_gone() {
  # wait up to 30 s for these pids to exit, then kill what is left
  local pid
  for _ in $(seq 300); do
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && break; pid=; done
    [ -z "$pid" ] && return 0
    sleep 0.1
  done
  kill -9 "$@" 2>/dev/null || true
}

stop() {
  local f pid children
  for f in slurmd slurmctld munged; do
    if [ -e "$STATE/$f.pid" ]; then
      pid=$(cat "$STATE/$f.pid")
      children=$(pgrep -P "$pid" 2>/dev/null || true)   # slurmctld's slurmscriptd
      kill "$pid" $children 2>/dev/null || true
      # shellcheck disable=SC2086
      wait_gone "$pid" $children
      rm -f "$STATE/$f.pid"
    fi
  done
  unconfigure
  remove_policy
  echo "slurm: stopped the daemons started here; configuration put back as it was before start"
}

unconfigure() {
  # remove only what start wrote: its slurm.conf (restoring one that was there before) and a munge key it made
  if [ -e "$CONF_DIR/slurm.conf" ] && head -1 "$CONF_DIR/slurm.conf" | grep -qF "$MARK"; then
    rm -f "$CONF_DIR/slurm.conf"
  fi
  if [ -e "$STATE/slurm.conf.before" ]; then
    mv "$STATE/slurm.conf.before" "$CONF_DIR/slurm.conf"
  fi
  if [ -e "$STATE/created-munge-key" ]; then
    rm -f /etc/munge/munge.key "$STATE/created-munge-key"
  fi
}

case "${1:-}" in
  start) trap 'echo "slurm: start failed; undoing it" >&2; stop >&2' ERR; start ;;
  stop) stop ;;
  *) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
