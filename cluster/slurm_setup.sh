#!/usr/bin/env bash
# Install and start a SLURM cluster of SLURM_NODES (default 2) nodes on this one
# machine (Debian, as root).
#
# What the SLURM tests (tests/test_slurm.py) and `make study-* CLUSTER=slurm`
# need on a machine without a cluster: Debian's slurm-wlm and munge, a
# slurm.conf, and munged, one slurmctld and one slurmd per node, started as
# plain daemons (no systemd). The nodes are node0, node1, ...: each slurmd is
# started with `slurmd -N nodeK` and listens on its own port (17000+K) on this
# host; Debian's slurm-wlm 22.05 accepts several NodeNames with the same
# NodeHostname this way. Each node declares all CPUs (nproc) and half the
# memory, so a 2-node job has 2 x nproc CPUs on paper (oversubscribed).
# Idempotent: when every node already answers in `sinfo`, nothing is restarted.
# Settings seen to work here (../shared/DESIGN.md): select/cons_tres,
# proctrack/linuxproc, task/none, one default partition.
#
# Usage: bash cluster/slurm_setup.sh        (SLURM_SETUP_FORCE=1 rewrites the
#        configuration and restarts the daemons; SLURM_NODES=N for N nodes;
#        SLURM_PARTITION_NODES=K puts K nodes in each partition: debug is the
#        first K and the default, debug2 the next K, ...; default: one partition
#        of every node. CI uses SLURM_NODES=6 SLURM_PARTITION_NODES=2 so that the
#        SLURM test files each have nodes of their own and never queue behind
#        each other, and the lost-node test kills a node no other test uses.)
#        bash cluster/slurm_setup.sh start-node node1   (start one node's slurmd
#        again, e.g. after a test stopped it, and mark the node usable)
set -euo pipefail

CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
PARTITION=${SLURM_PARTITION:-debug}
NODES=${SLURM_NODES:-2}
PER_PARTITION=${SLURM_PARTITION_NODES:-$NODES}
BASE_PORT=17000
log() { echo "[slurm_setup] $*"; }
NODE_NAMES=$(for k in $(seq 0 $((NODES - 1))); do printf 'node%s ' "$k"; done)

if [ "$(id -u)" != 0 ]; then
    echo "[slurm_setup] must run as root (it installs packages and starts daemons)" >&2
    exit 1
fi

node_state() {  # the state of node $1, empty when slurmctld does not answer
    timeout 10 sinfo -h -N -n "$1" -o '%T' 2>/dev/null | head -n1 || true
}
all_up() {  # every node answers as usable
    for n in $NODE_NAMES; do
        case "$(node_state "$n")" in idle*|mix*|alloc*|completing*) ;; *) return 1 ;; esac
    done
}
running() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
start_slurmd() {  # start node $1's slurmd unless it runs
    mkdir -p "/var/spool/slurmd/$1"
    if ! running "/run/slurm/slurmd-$1.pid"; then
        log "starting slurmd -N $1"
        /usr/sbin/slurmd -N "$1"
    fi
}
wait_up() {  # wait until the nodes $* are usable, bringing back nodes remembered as down
    for _ in $(seq 1 60); do
        local ok=1
        for n in "$@"; do
            case "$(node_state "$n")" in
                idle*|mix*|alloc*|completing*) ;;
                down*|drain*|fail*)
                    ok=0; scontrol update NodeName="$n" State=RESUME >/dev/null 2>&1 || true ;;
                *) ok=0 ;;
            esac
        done
        if [ "$ok" = 1 ]; then log "nodes up: $(sinfo -h -o '%P %D %T %C %N' | paste -sd ';')"; return 0; fi
        sleep 1
    done
    echo "[slurm_setup] nodes $* did not become idle; see /var/log/slurm/slurmctld.log and slurmd-*.log" >&2
    sinfo -N -l >&2 || true
    return 1
}

if [ "${1:-}" = start-node ]; then
    [ -n "${2:-}" ] || { echo "usage: $0 start-node NODE" >&2; exit 2; }
    start_slurmd "$2"
    wait_up "$2"
    exit $?
fi

if [ "${SLURM_SETUP_FORCE:-0}" != 1 ] && command -v sinfo >/dev/null 2>&1 && all_up; then
    log "SLURM is already up: $(sinfo -h -o '%P %D %T %C %N' | paste -sd ';')"
    exit 0
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
# the machine's memory shared by the nodes, less a little for the OS, so that SLURM never finds
# a node short of what it declared
MEM_MB=$(free -m | awk -v n="$NODES" '/^Mem:/ {print int($2 * 0.95 / n)}')
mkdir -p "$CONF_DIR" /var/spool/slurmctld /var/spool/slurmd /var/log/slurm /run/slurm
cat > "$CONF.new" <<EOF
# a $NODES-node SLURM on this one machine, written by cluster/slurm_setup.sh
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
# schedule within seconds: the main loop and backfill every 2 s instead of every 60 s and 30 s, or a
# job submitted just as a node frees up waits for the next pass (the tests submit dozens of jobs)
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd/%n
SlurmctldPidFile=/run/slurm/slurmctld.pid
SlurmdPidFile=/run/slurm/slurmd-%n.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd-%n.log
SlurmctldPort=6817
# a node whose slurmd stopped answering is DOWN after this long (the tests stop one)
SlurmdTimeout=20
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=10
InactiveLimit=0
$(for k in $(seq 0 $((NODES - 1))); do
    echo "NodeName=node$k NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((BASE_PORT + k)) CPUs=$CPUS RealMemory=$MEM_MB State=UNKNOWN"
done)
$(for first in $(seq 0 "$PER_PARTITION" $((NODES - 1))); do
    members=$(for k in $(seq "$first" $((first + PER_PARTITION - 1))); do if [ "$k" -lt "$NODES" ]; then printf 'node%s,' "$k"; fi; done)
    if [ "$first" = 0 ]; then name=$PARTITION; default=YES; else name=$PARTITION$((first / PER_PARTITION + 1)); default=NO; fi
    echo "PartitionName=$name Nodes=${members%,} Default=$default MaxTime=INFINITE State=UP"
done)
EOF
changed=1
if [ -f "$CONF" ] && cmp -s "$CONF" "$CONF.new"; then changed=0; fi
mv "$CONF.new" "$CONF"
# cgroup.conf is read by slurmd even with proctrack/linuxproc in some builds; keep it harmless
[ -f "$CONF_DIR/cgroup.conf" ] || echo "CgroupPlugin=autodetect" > "$CONF_DIR/cgroup.conf"

# ---------------------------------------------------------------- daemons
stop() {
    if running "$1"; then
        kill "$(cat "$1")" 2>/dev/null || true
        for _ in $(seq 1 50); do running "$1" || break; sleep 0.2; done
    fi
}
if [ "$changed" = 1 ] || [ "${SLURM_SETUP_FORCE:-0}" = 1 ]; then
    for pidfile in /run/slurm/slurmd*.pid; do [ -e "$pidfile" ] && stop "$pidfile"; done
    stop /run/slurm/slurmctld.pid
fi
if ! running /run/slurm/slurmctld.pid; then
    log "starting slurmctld ($NODES nodes on $HOST, $CPUS CPUs and ${MEM_MB} MB each)"
    /usr/sbin/slurmctld
fi
for n in $NODE_NAMES; do start_slurmd "$n"; done

# ---------------------------------------------------------------- wait for the nodes
# shellcheck disable=SC2086
wait_up $NODE_NAMES
