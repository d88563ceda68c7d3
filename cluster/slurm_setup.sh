#!/usr/bin/env bash
# Install and start a one-node SLURM cluster on this machine (Debian, as root).
#
# What the SLURM tests (tests/test_slurm.py) and `make study-* CLUSTER=slurm`
# need on a machine without a cluster: Debian's slurm-wlm and munge, a
# slurm.conf describing this one machine (hostname, CPUs from nproc, memory
# from free), and munged, slurmctld and slurmd started as plain daemons (no
# systemd). Idempotent: when the node already answers in `sinfo`, nothing is
# restarted. Settings seen to work here (../shared/DESIGN.md):
# select/cons_tres, proctrack/linuxproc, task/none, one default partition.
#
# Usage: bash cluster/slurm_setup.sh        (SLURM_SETUP_FORCE=1 rewrites the
#        configuration and restarts the daemons)
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
PARTITION=${SLURM_PARTITION:-debug}
log() { echo "[slurm_setup] $*"; }

if [ "$(id -u)" != 0 ]; then
    echo "[slurm_setup] must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

node_state() {  # the state of this machine's node, empty when slurmctld does not answer
    timeout 10 sinfo -h -N -n "$(hostname -s)" -o '%T' 2>/dev/null | head -n1 || true
}

if [ "${SLURM_SETUP_FORCE:-0}" != 1 ] && command -v sinfo >/dev/null 2>&1; then
    case "$(node_state)" in
        idle*|mix*|alloc*|completing*)
            log "SLURM is already up: $(sinfo -h -o '%P %D %T %C' | head -n1)"
            exit 0 ;;
    esac
fi

# ---------------------------------------------------------------- packages
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1 \
        || ! command -v sbatch >/dev/null 2>&1; then
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends slurm-wlm munge >/dev/null; }
fi

# ---------------------------------------------------------------- munge
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile=/etc/munge/munge.key --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge /run/munge
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge
chmod 0400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    pkill_pidfile() { [ -s "$1" ] && kill "$(cat "$1")" 2>/dev/null || true; }
    pkill_pidfile /run/munge/munged.pid
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 1 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
    munge -n | unmunge >/dev/null || { echo "[slurm_setup] munged does not answer" >&2; exit 1; }
fi

# ---------------------------------------------------------------- slurm.conf
HOST=$(hostname -s)
CPUS=$(nproc)
# leave a little memory to the OS so that SLURM never finds the node short of what it declared
MEM_MB=$(free -m | awk '/^Mem:/ {print int($2 * 0.95)}')
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
cat > "$CONF.new" <<EOF
# one-node SLURM for this machine, written by cluster/slurm_setup.sh
ClusterName=interclr
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=10
InactiveLimit=0
NodeName=$HOST CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN
PartitionName=$PARTITION Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
changed=1
if [ -f "$CONF" ] && cmp -s "$CONF" "$CONF.new"; then changed=0; fi
mv "$CONF.new" "$CONF"
# cgroup.conf is read by slurmd even with proctrack/linuxproc in some builds; keep it harmless
[ -f "$CONF_DIR/cgroup.conf" ] || echo "CgroupPlugin=autodetect" > "$CONF_DIR/cgroup.conf"

# ---------------------------------------------------------------- daemons
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
stop() {
    if running "$1"; then
        kill "$(cat "$1")" 2>/dev/null || true
        for _ in $(seq 1 50); do running "$1" || break; sleep 0.2; done
    fi
}
if [ "$changed" = 1 ] || [ "${SLURM_SETUP_FORCE:-0}" = 1 ]; then
    stop /run/slurm/slurmd.pid
    stop /run/slurm/slurmctld.pid
fi
if ! running /run/slurm/slurmctld.pid; then
    log "starting slurmctld ($HOST, $CPUS CPUs, ${MEM_MB} MB)"
    /usr/sbin/slurmctld
fi
if ! running /run/slurm/slurmd.pid; then
    log "starting slurmd"
    /usr/sbin/slurmd
fi

# ---------------------------------------------------------------- wait for the node
for i in $(seq 1 60); do
    state=$(node_state)
    case "$state" in
        idle*|mix*|alloc*) log "node $HOST is $state: $(sinfo -h -o '%P %D %T %C' | head -n1)"; exit 0 ;;
        down*|drain*|fail*)
            # a node remembered as down by an earlier slurmctld: bring it back
            scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true ;;
    esac
    sleep 1
done
echo "[slurm_setup] the node did not become idle; see /var/log/slurm/slurmctld.log and slurmd.log" >&2
sinfo -N -l >&2 || true
exit 1
