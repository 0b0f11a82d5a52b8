#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for tests/cluster/test_slurm.py (CI runs it) and for
# trying profiles/slurm by hand: Debian's munge, MariaDB, slurmdbd (accounting, so sacct lists
# every job), slurmctld and slurmd, with the partitions that profiles/slurm/partitions.yaml
# names, `cpu` (the default) and `gpu`, both on this node, and an account `srprune` for root.
#
#   sudo bash tests/cluster/start-slurm.sh      # then: sinfo; sbatch --wrap hostname; sacct
#
# Idempotent: installs only the packages that are missing, writes /etc/slurm/slurm.conf and
# slurmdbd.conf (never over files it did not write itself), starts only the daemons that are not
# running (and restarts them when a config changed), then waits until the node takes jobs.
set -euo pipefail

CONF=/etc/slurm/slurm.conf
DBD_CONF=/etc/slurm/slurmdbd.conf
MARK="# written by srprune tests/cluster/start-slurm.sh"
CLUSTER=srprune-test
ACCOUNT=srprune
STATE=/var/lib/slurm
LOGS=/var/log/slurm

say() { echo "start-slurm: $*"; }
die() { echo "start-slurm: $*" >&2; exit 1; }

install_packages() {
    local cmd
    for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct; do
        command -v "$cmd" >/dev/null || {
            say "installing munge, MariaDB and SLURM (Debian packages)"
            apt-get update -qq
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
                munge mariadb-server slurmdbd slurmctld slurmd slurm-client >/dev/null
            return
        }
    done
}

slurm_conf() {
    local host
    host=$(hostname -s)
    cat <<END
$MARK
ClusterName=$CLUSTER
SlurmctldHost=$host
AuthType=auth/munge
SlurmUser=slurm
StateSaveLocation=$STATE/slurmctld
SlurmdSpoolDir=$STATE/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
JobCompType=jobcomp/none
AccountingStoreFlags=job_comment
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
$(slurmd -C | head -n 1) State=UNKNOWN
PartitionName=cpu Nodes=$host Default=YES MaxTime=INFINITE State=UP
PartitionName=gpu Nodes=$host MaxTime=INFINITE State=UP
END
}

slurmdbd_conf() {
    cat <<END
$MARK
AuthType=auth/munge
DbdHost=localhost
SlurmUser=slurm
PidFile=/run/slurmdbd.pid
LogFile=$LOGS/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StorageLoc=slurm_acct_db
END
}

# write_conf FILE TEXT: (re)writes FILE; prints "changed" when it differed.
write_conf() {
    local file=$1 text=$2
    [ ! -e "$file" ] || grep -qxF "$MARK" "$file" ||
        die "$file exists and was not written by this script; not touching this machine's SLURM"
    [ -e "$file" ] && [ "$text" = "$(cat "$file")" ] && return
    mkdir -p "$(dirname "$file")"
    printf '%s\n' "$text" > "$file.tmp" && mv "$file.tmp" "$file"
    echo changed
}

pid_of() { cat "$1" 2>/dev/null; }   # a daemon removes its pid file when it stops
running() { local pid; pid=$(pid_of "$1") && [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; }

stop() {
    local pid
    running "$1" && pid=$(pid_of "$1") || return 0
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
}

# wait_for WHAT COMMAND...: retry COMMAND for up to 30 s.
wait_for() {
    local what=$1 _
    shift
    for _ in $(seq 60); do "$@" >/dev/null 2>&1 && return; sleep 0.5; done
    die "$what did not come up; see $LOGS/"
}

start_munge() {
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile /etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
    mkdir -p /run/munge && chown munge:munge /run/munge
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
}

# MariaDB (local socket only) with a database user slurm that logs in as the Unix user slurm.
start_database() {
    mkdir -p /run/mysqld "$LOGS" && chown mysql:mysql /run/mysqld
    if ! mariadb-admin ping >/dev/null 2>&1; then
        say "starting MariaDB"
        runuser -u mysql -- mariadbd --skip-networking >"$LOGS/mariadb.log" 2>&1 &
        wait_for MariaDB mariadb-admin ping
    fi
    mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED VIA unix_socket;
                GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"
}

# sacctmgr_ensure WORD LIST-ARGS... -- ADD-ARGS...: `sacctmgr add` unless `sacctmgr list`
# already prints WORD.
sacctmgr_ensure() {
    local word=$1 list=()
    shift
    while [ "$1" != -- ]; do list+=("$1"); shift; done
    shift
    sacctmgr -n -P list "${list[@]}" | grep -qxF "$word" || sacctmgr -i add "$@" >/dev/null
}

start_slurm() {
    local changed=$1
    mkdir -p "$STATE/slurmctld" "$STATE/slurmd"
    chown slurm:slurm "$STATE/slurmctld" "$LOGS" "$DBD_CONF" && chmod 600 "$DBD_CONF"
    if [ -n "$changed" ]; then
        stop /run/slurmd.pid
        stop /run/slurmctld.pid
        stop /run/slurmdbd.pid
    fi
    running /run/slurmdbd.pid || { say "starting slurmdbd"; slurmdbd; }
    wait_for slurmdbd sacctmgr -n list cluster
    sacctmgr_ensure "$CLUSTER" cluster format=cluster -- cluster "$CLUSTER"
    sacctmgr_ensure "$ACCOUNT" account format=account -- account "$ACCOUNT" cluster="$CLUSTER"
    sacctmgr_ensure "$ACCOUNT" user root format=account -s -- user root account="$ACCOUNT"
    running /run/slurmctld.pid || { say "starting slurmctld"; slurmctld; }
    running /run/slurmd.pid || { say "starting slurmd"; slurmd; }
}

node_takes_jobs() {
    case $(sinfo -h -n "$(hostname -s)" -o %t | head -n 1) in
        idle* | mix* | alloc*) return 0 ;;
        drain* | down*) scontrol update nodename="$(hostname -s)" state=resume ;;
    esac
    return 1
}

[ "$(id -u)" = 0 ] || die "run as root (it installs packages and starts daemons)"
install_packages
changed=$(write_conf "$CONF" "$(slurm_conf)")$(write_conf "$DBD_CONF" "$(slurmdbd_conf)")
start_munge
start_database
start_slurm "$changed"
wait_for "node $(hostname -s)" node_takes_jobs
say "ready: $(sinfo -h -o '%P %t %C' | tr '\n' ' ')(partition: cpus allocated/idle/other/total)"
