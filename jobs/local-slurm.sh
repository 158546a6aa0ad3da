#!/usr/bin/env bash
# Single-node Slurm on this machine, for tests and CI (Debian/Ubuntu, no systemd needed).
#
#   jobs/local-slurm.sh up      install (apt, only if missing), configure, start; idempotent
#   jobs/local-slurm.sh down    stop the daemons (keeps the install and the config)
#   jobs/local-slurm.sh status  print sinfo/squeue; exit 0 if up, 1 if not
#
# Environment:
#   RANDOPT_SLURM_DIR         state/spool/log folder (default /var/lib/randopt-slurm)
#   RANDOPT_SLURM_ACCOUNTING  1 = also install and run slurmdbd + MariaDB so that `sacct`
#                             works (submitit reads job states with sacct); 0 = no accounting
#                             (default 1)
#   RANDOPT_SLURM_TIMEOUT     seconds to wait for the node to become idle (default 60)
#   RANDOPT_SLURM_CPUS        CPUs the node advertises (default: the real count). A larger
#                             value (SlurmdParameters=config_overrides) lets --ntasks-per-node
#                             exceed the cores, e.g. submitit tasks_per_node=4 on 2 cores;
#                             with the real count only `-n N --overcommit` can do that.
#
# One partition `debug` (Default, OverSubscribe=FORCE, MaxTime=INFINITE) with this host as the
# only node. PyPI MPICH needs `srun --mpi=pmi2`; more tasks than cores needs `--overcommit`.
set -euo pipefail

DIR=${RANDOPT_SLURM_DIR:-/var/lib/randopt-slurm}
ACCT=${RANDOPT_SLURM_ACCOUNTING:-1}
TIMEOUT=${RANDOPT_SLURM_TIMEOUT:-60}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
DBD_CONF=$CONF_DIR/slurmdbd.conf
MARKER="# written by randopt_hpc jobs/local-slurm.sh"
LOG=$DIR/log
CLUSTER=randopt

ORIG_ARGS=("$@")
die() { echo "local-slurm: $*" >&2; exit 1; }

# Run as root, or re-exec through passwordless sudo.
need_root() {
    if [[ $(id -u) -ne 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            exec sudo -n -E bash "$0" "${ORIG_ARGS[@]}"
        fi
        die "needs root (or passwordless sudo) to install and run Slurm daemons"
    fi
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

log_tail() {
    local f
    for f in "$LOG"/slurmctld.log "$LOG"/slurmd.log "$LOG"/slurmdbd.log; do
        [[ -f $f ]] && { echo "--- tail $f" >&2; tail -n 15 "$f" >&2; }
    done
    return 0
}

apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    local opts=(-y -q -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
    if ! apt-get install "${opts[@]}" "$@" >"$DIR/apt.log" 2>&1; then
        apt-get update -q >>"$DIR/apt.log" 2>&1 || true
        apt-get install "${opts[@]}" "$@" >>"$DIR/apt.log" 2>&1 \
            || { tail -n 5 "$DIR/apt.log" >&2; die "apt-get install $* failed (log: $DIR/apt.log)"; }
    fi
}

install_pkgs() {
    command -v apt-get >/dev/null 2>&1 || { command -v slurmctld >/dev/null 2>&1 \
        || die "slurmctld not installed and no apt-get to install it"; }
    local pkgs=()
    command -v slurmctld >/dev/null 2>&1 && command -v slurmd >/dev/null 2>&1 \
        && command -v munged >/dev/null 2>&1 || pkgs+=(slurm-wlm munge)
    if [[ $ACCT == 1 ]]; then
        command -v slurmdbd >/dev/null 2>&1 || pkgs+=(slurmdbd)
        command -v mariadbd >/dev/null 2>&1 || command -v mysqld >/dev/null 2>&1 \
            || pkgs+=(mariadb-server)
    fi
    if ((${#pkgs[@]})); then apt_install "${pkgs[@]}"; fi
}

# Write $2 to $1 if different; return 0 if it changed.
write_if_changed() {
    local path=$1 content=$2
    if [[ -f $path ]] && [[ "$(cat "$path")" == "$content" ]]; then return 1; fi
    if [[ -f $path ]] && ! grep -qF "$MARKER" "$path"; then
        cp -p "$path" "$path.orig.$(date +%s)"
    fi
    printf '%s\n' "$content" >"$path"
    return 0
}

write_conf() {
    local host cpus mem_mb real_mem
    host=$(hostname -s)
    cpus=$(nproc --all 2>/dev/null || nproc)
    local overrides=""
    if [[ -n ${RANDOPT_SLURM_CPUS:-} && ${RANDOPT_SLURM_CPUS} != "$cpus" ]]; then
        [[ $RANDOPT_SLURM_CPUS =~ ^[1-9][0-9]*$ ]] || die "RANDOPT_SLURM_CPUS must be a positive integer"
        cpus=$RANDOPT_SLURM_CPUS
        overrides="SlurmdParameters=config_overrides"
    fi
    mem_mb=$(awk '/^MemTotal:/ {print int($2/1024)}' /proc/meminfo)
    real_mem=$((mem_mb * 95 / 100))
    local acct_lines
    if [[ $ACCT == 1 ]]; then
        acct_lines="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=6819"
    else
        acct_lines="AccountingStorageType=accounting_storage/none"
    fi
    mkdir -p "$CONF_DIR"
    # Job ids start at a random number per state folder: PyPI MPICH names its shared-memory segment
    # after the PMI world (job id + step id), and a segment left in /dev/shm by a killed rank of an
    # earlier job with the same id makes MPI_Init fail ("Message truncated") after a Slurm reinstall.
    [[ -s $DIR/first_job_id ]] || echo $(( (RANDOM * 32768 + RANDOM) % 50000000 + 1000000 )) >"$DIR/first_job_id"
    # NodeAddr/SlurmctldHost address 127.0.0.1: no dependency on the hostname resolving.
    write_if_changed "$CONF" "$MARKER
ClusterName=$CLUSTER
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd.pid
SlurmctldLogFile=$LOG/slurmctld.log
SlurmdLogFile=$LOG/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldPort=6817
SlurmdPort=6818
# no systemd/cgroups needed
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$acct_lines
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
SwitchType=switch/none
FirstJobId=$(cat "$DIR/first_job_id")
JobRequeue=1
KillWait=10
MinJobAge=300
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
Waittime=0
SchedulerType=sched/backfill
# schedule often; a requeued job waits cred_expire seconds (default 120) before it may restart
SchedulerParameters=sched_interval=2,bf_interval=2
AuthInfo=cred_expire=10
# reject at submission what can never run (e.g. -n 3 on 2 cores without --overcommit)
EnforcePartLimits=ALL
$overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$real_mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=FORCE" && CHANGED=1
    if [[ $ACCT == 1 ]]; then
        write_if_changed "$DBD_CONF" "$MARKER
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
PidFile=$DIR/run/slurmdbd.pid
LogFile=$LOG/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=root
StoragePort=3306" && CHANGED=1
        chmod 600 "$DBD_CONF"
    fi
    return 0
}

ensure_munge() {
    if [[ ! -s /etc/munge/munge.key ]]; then
        mkdir -p /etc/munge
        if command -v mungekey >/dev/null 2>&1; then
            mungekey --create --keyfile=/etc/munge/munge.key
        else
            dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
        fi
    fi
    chown -R munge:munge /etc/munge /var/lib/munge /var/log/munge 2>/dev/null || true
    chmod 700 /etc/munge
    chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge && chmod 755 /run/munge
    if ! pid_alive /run/munge/munged.pid || ! munge -n </dev/null >/dev/null 2>&1; then
        runuser -u munge -- /usr/sbin/munged --force \
            || die "munged failed to start (see /var/log/munge/munged.log)"
    fi
    local i
    for i in $(seq 1 20); do munge -n </dev/null | unmunge >/dev/null 2>&1 && return 0; sleep 0.5; done
    die "munge does not work (munge -n | unmunge fails; see /var/log/munge/munged.log)"
}

start_mariadb() {
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    if ! mysqladmin ping >/dev/null 2>&1; then
        local db_bin
        db_bin=$(command -v mariadbd-safe || command -v mysqld_safe) || die "mariadb-server missing"
        # setsid: its own session, so it outlives the shell (or test) that started it, as the
        # Slurm daemons (which fork into the background themselves) do
        setsid nohup "$db_bin" --skip-networking=0 --bind-address=127.0.0.1 \
            >"$LOG/mariadb.out" 2>&1 </dev/null &
        local i
        for i in $(seq 1 60); do mysqladmin ping >/dev/null 2>&1 && break; sleep 0.5; done
        mysqladmin ping >/dev/null 2>&1 || { tail -n 15 "$LOG/mariadb.out" >&2; die "MariaDB did not start"; }
    fi
}

start_slurmdbd() {
    start_mariadb
    if ! pid_alive "$DIR/run/slurmdbd.pid"; then
        slurmdbd || { log_tail; die "slurmdbd failed to start"; }
    fi
    local i
    for i in $(seq 1 60); do
        (exec 3<>/dev/tcp/127.0.0.1/6819) 2>/dev/null && return 0
        sleep 0.5
    done
    log_tail; die "slurmdbd does not listen on port 6819"
}

register_cluster() {
    # sacctmgr needs slurmdbd; the cluster row must exist before slurmctld registers.
    if ! sacctmgr -n -P list cluster format=cluster 2>/dev/null | grep -qx "$CLUSTER"; then
        sacctmgr -i add cluster "$CLUSTER" >/dev/null 2>&1 || true
    fi
}

node_state() { sinfo -h -N -o '%t' 2>/dev/null | head -n 1; }

summary() { sinfo -h -o 'partition=%P avail=%a nodes=%D state=%t cpus=%c mem=%mMB node=%N timelimit=%l'; }

cmd_up() {
    need_root
    mkdir -p "$DIR"/{state,spool,run,log}
    install_pkgs
    CHANGED=0
    write_conf
    ensure_munge
    if [[ $CHANGED == 1 ]]; then    # config changed: restart Slurm daemons if running
        stop_pidfile "$DIR/run/slurmd.pid" slurmd
        stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
    fi
    if [[ $ACCT == 1 ]]; then
        if [[ $CHANGED == 1 ]]; then stop_pidfile "$DIR/run/slurmdbd.pid" slurmdbd; fi
        start_slurmdbd
        register_cluster
    fi
    if ! pid_alive "$DIR/run/slurmctld.pid"; then
        slurmctld || { log_tail; die "slurmctld failed to start"; }
    fi
    if ! pid_alive "$DIR/run/slurmd.pid"; then
        slurmd || { log_tail; die "slurmd failed to start"; }
    fi
    local deadline=$((SECONDS + TIMEOUT)) st="" resumed=0
    while ((SECONDS < deadline)); do
        st=$(node_state)
        case $st in
            idle|mix|mixed|alloc|allocated|comp) echo "local Slurm up: $(summary)"; return 0 ;;
            down*|drain*|drng*|fail*)
                # a DOWN/DRAINED node left over from an earlier run: resume it once
                if ((resumed == 0)); then
                    scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
                    resumed=1
                fi ;;
        esac
        sleep 1
    done
    log_tail
    die "node not idle after ${TIMEOUT}s (state: ${st:-unknown}; sinfo: $(sinfo -h 2>&1 | head -n 1))"
}

stop_pidfile() {
    local pidfile=$1 name=$2 pid i
    if pid_alive "$pidfile"; then
        pid=$(cat "$pidfile")
        kill "$pid" 2>/dev/null || true
        for i in $(seq 1 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
    fi
    # fall back to the exact process name (daemon started without our pid file)
    pkill -x "$name" 2>/dev/null || true
    rm -f "$pidfile"
}

cmd_down() {
    need_root
    stop_pidfile "$DIR/run/slurmd.pid" slurmd
    stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
    stop_pidfile "$DIR/run/slurmdbd.pid" slurmdbd
    if command -v mysqladmin >/dev/null 2>&1 && mysqladmin ping >/dev/null 2>&1; then
        mysqladmin shutdown >/dev/null 2>&1 || true
    fi
    stop_pidfile /run/munge/munged.pid munged
    echo "local Slurm down"
}

cmd_status() {
    if ! command -v sinfo >/dev/null 2>&1; then echo "local Slurm not installed"; return 1; fi
    if ! sinfo >/dev/null 2>&1; then echo "local Slurm down (no controller)"; return 1; fi
    sinfo
    squeue
    case $(node_state) in idle|mix|mixed|alloc|allocated|comp*) return 0 ;; *) return 1 ;; esac
}

case ${1:-} in
    up) shift; cmd_up "$@" ;;
    down) shift; cmd_down "$@" ;;
    status) shift; cmd_status "$@" ;;
    *) echo "usage: $0 up|down|status" >&2; exit 2 ;;
esac
