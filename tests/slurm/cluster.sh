#!/usr/bin/env bash
# Start/stop a throw-away single-node SLURM cluster for the workflow's cluster tests.
#   tests/slurm/cluster.sh install          apt-get install slurmctld slurmd slurm-client munge (root)
#   tests/slurm/cluster.sh start DIR        write slurm.conf/gres.conf into DIR, start munged, slurmctld, slurmd
#   tests/slurm/cluster.sh stop DIR         stop the daemons started from DIR
# Partitions: `cpu` (default) and `gpu`; the node has a fake GPU GRES (File=/dev/null), so jobs that
# request --gpus=1 / --gres=gpu:1 are scheduled but see no device. Clients need SLURM_CONF=DIR/slurm.conf.
set -euo pipefail
cmd=${1:?usage: cluster.sh install|start DIR|stop DIR}

case "$cmd" in
install)
    if [ "$(id -u)" != 0 ]; then echo "SKIP: not root, cannot install SLURM" >&2; exit 3; fi
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
        && command -v sbatch >/dev/null; then exit 0; fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq slurmctld slurmd slurm-client munge >/dev/null
    ;;
start)
    dir=$(realpath -m "${2:?DIR}")
    if pgrep -x slurmctld >/dev/null || pgrep -x slurmd >/dev/null; then
        echo "a slurmctld/slurmd is already running on this machine; stop it first" >&2
        exit 1
    fi
    mkdir -p "$dir"/{spool/ctld,spool/d,log,run}
    host=$(hostname -s)
    cpus=$(nproc)
    mem=$(awk '/MemTotal/ {print int($2/1024*0.8)}' /proc/meminfo)
    # munge: one key for this test cluster, daemon socket under DIR
    if [ ! -f /etc/munge/munge.key ]; then
        mkdir -p /etc/munge && dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
        chmod 400 /etc/munge/munge.key
    fi
    mkdir -p /run/munge /var/lib/munge /var/log/munge
    if ! pgrep -x munged >/dev/null; then
        munged --force --num-threads 2 >/dev/null 2>&1 || munged --force
        echo started >"$dir/run/munged.started"
    fi
    cat >"$dir/slurm.conf" <<CONF
ClusterName=brainrecon-test
SlurmctldHost=$host
AuthType=auth/munge
CryptoType=crypto/munge
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
GresTypes=gpu
ReturnToService=2
MinJobAge=300
KillWait=5
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldPidFile=$dir/run/slurmctld.pid
SlurmdPidFile=$dir/run/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
DefMemPerCPU=1000
NodeName=$host CPUs=$cpus RealMemory=$mem Gres=gpu:1 State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
CONF
    echo "NodeName=$host Name=gpu File=/dev/null" >"$dir/gres.conf"
    # job steps (srun inside a job) look for the default config path: point it at ours, if free
    mkdir -p /etc/slurm
    if [ ! -e /etc/slurm/slurm.conf ] || [ -L /etc/slurm/slurm.conf ]; then
        ln -sfn "$dir/slurm.conf" /etc/slurm/slurm.conf
        ln -sfn "$dir/gres.conf" /etc/slurm/gres.conf
        echo "$dir" >"$dir/run/etc-links"
    fi
    export SLURM_CONF="$dir/slurm.conf"
    slurmctld -f "$dir/slurm.conf" -i
    slurmd -f "$dir/slurm.conf"
    for _ in $(seq 1 30); do
        if sinfo -h -o "%P %t" 2>/dev/null | grep -Eq "^gpu +(idle|mix)"; then
            sinfo
            exit 0
        fi
        sleep 1
    done
    echo "SLURM did not come up; logs:" >&2
    tail -n 20 "$dir"/log/*.log >&2 || true
    exit 1
    ;;
stop)
    dir=$(realpath -m "${2:?DIR}")
    for pidf in "$dir/run/slurmd.pid" "$dir/run/slurmctld.pid"; do
        [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null || true
    done
    sleep 1
    if [ -f "$dir/run/munged.started" ]; then pkill -x munged || true; fi
    if [ -f "$dir/run/etc-links" ]; then rm -f /etc/slurm/slurm.conf /etc/slurm/gres.conf; fi
    ;;
*)
    echo "unknown command $cmd" >&2
    exit 2
    ;;
esac
