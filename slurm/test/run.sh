#!/bin/bash
# `make test-slurm`: a real one-node Slurm on this machine, then nnp's batch jobs under it
# (slurm/test/test_slurm.py): the CPU sbatch to model.pt; preemption (SIGUSR1) -> requeue ->
# resume -> finish; a 2-task srun DDP job (gloo); a 2-member Hydra submitit sweep; active-learning
# labels as a submitit job array (labeler.executor=slurm). Select tests with pytest args (-k ...).
#
# Needs root (apt-get, daemons). Installs Debian's slurmctld, slurmd, slurm-client and munge when
# missing, writes a minimal config into a temporary folder, starts munged, slurmctld and slurmd,
# and stops exactly those (by the process ids they wrote) at the end. No systemd, no cgroups, no
# accounting database (scontrol show job tells state and Restarts=).
#
#   PYTHON=.venv/bin/python bash slurm/test/run.sh [pytest args]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
PYTHON=$(cd "$(dirname "$PYTHON")" && pwd)/$(basename "$PYTHON")
T0=$(date +%s)

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null \
   || ! command -v sbatch >/dev/null; then
    echo "== installing slurmctld slurmd slurm-client munge (apt-get, --no-install-recommends)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

WORK=$(mktemp -d /tmp/nnp-slurm.XXXXXX)
chmod 755 "$WORK"
mkdir -p "$WORK"/{munge,state,spool,jobs}
chmod 755 "$WORK/munge"   # munged refuses a socket folder that others cannot search
HOST=$(hostname -s)
PIDS=()

stop_daemons() {
    # the daemons this script started, by the process ids they recorded
    for pidfile in "$WORK/slurmd.pid" "$WORK/slurmctld.pid" "$WORK/munge/munged.pid"; do
        if [[ -s $pidfile ]]; then
            pid=$(cat "$pidfile")
            kill "$pid" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        fi
    done
}
on_exit() {
    status=$?
    stop_daemons
    if [[ $status -ne 0 ]]; then
        echo "== failed: daemon logs and job outputs are in $WORK"
        tail -n 20 "$WORK"/slurmctld.log "$WORK"/slurmd.log 2>/dev/null || true
    else
        rm -rf "$WORK"
    fi
    echo "== make test-slurm: $(( $(date +%s) - T0 )) s wall"
    exit $status
}
trap on_exit EXIT

dd if=/dev/urandom of="$WORK/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$WORK/munge/munge.key"
SOCKET="$WORK/munge/munge.socket.2"
munged --force --socket="$SOCKET" --key-file="$WORK/munge/munge.key" --log-file="$WORK/munge/munged.log" \
       --pid-file="$WORK/munge/munged.pid" --seed-file="$WORK/munge/munged.seed"

NODE=$(slurmd -C | head -n 1)           # NodeName=host CPUs=... RealMemory=... as slurmd sees them
NODE=${NODE/NodeName=$HOST/NodeName=$HOST NodeAddr=127.0.0.1}
export SLURM_CONF="$WORK/slurm.conf"
cat > "$SLURM_CONF" <<CONF
ClusterName=nnptest
SlurmctldHost=$HOST(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$SOCKET,cred_expire=10
SlurmUser=root
SlurmdUser=root
StateSaveLocation=$WORK/state
SlurmdSpoolDir=$WORK/spool
SlurmctldPidFile=$WORK/slurmctld.pid
SlurmdPidFile=$WORK/slurmd.pid
SlurmctldLogFile=$WORK/slurmctld.log
SlurmdLogFile=$WORK/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2,bf_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MinJobAge=600
KillWait=10
$NODE State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF

slurmctld -f "$SLURM_CONF"
slurmd -f "$SLURM_CONF"
for _ in $(seq 100); do
    sinfo -h -o %T 2>/dev/null | grep -q idle && break
    sleep 0.2
done
sinfo
echo "== slurm up after $(( $(date +%s) - T0 )) s; config $SLURM_CONF"

export NNP_SLURM_WORK="$WORK/jobs" NNP_PYTHON="$PYTHON" PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
cd "$REPO"
"$PYTHON" -m pytest -p no:cacheprovider -q -x slurm/test/test_slurm.py "$@"
