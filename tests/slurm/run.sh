#!/usr/bin/env bash
# Runs the Slurm job array of docs/cluster.md on a throwaway one-node cluster and checks that
# `kdx batch --shard` gives the same results as one local batch, even when a task is cancelled
# mid-run and the whole array is submitted again. Needs root (apt, daemons); see README.md.
#
#   KDX=target/release/kdx bash tests/slurm/run.sh      (KDX_SLURM_KEEP=1 keeps its temp dir)
set -euo pipefail

say() { printf '[slurm-test %s] %s\n' "$(date +%T)" "$*"; }
die() { printf '[slurm-test %s] FAIL: %s\n' "$(date +%T)" "$*" >&2; exit 1; }

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
# Relative, so that the local batch and the array write the same `recipe` column.
recipes=tests/slurm/recipes
shards=3
killed=slurm-long/run   # the run whose task gets cancelled (tests/slurm/recipes/long.toml)
ctld_port=16817         # not Slurm's defaults, so that a real Slurm on the machine is left alone
slurmd_port=16818

[ -n "${KDX:-}" ] || die "set KDX to the kdx binary to test, e.g. KDX=target/release/kdx"
case $KDX in /*) ;; *) KDX=$PWD/$KDX ;; esac
[ -x "$KDX" ] || die "KDX=$KDX is not an executable file (build it with cargo build --release)"
[ "$(id -u)" = 0 ] || die "must run as root: it installs packages and starts munged, slurmctld and slurmd"
command -v python3 >/dev/null || die "python3 is needed for the checks (tests/slurm/check.py)"
cd "$repo"

# --- Scratch space, and the cleanup that stops the cluster whatever happens ------------------
tmp=$(mktemp -d "${TMPDIR:-/tmp}/kdx-slurm.XXXXXX")
# munged insists that every directory above its socket is searchable by all.
chmod 755 "$tmp"
mkdir -p "$tmp"/{munge,run,state,spool,log,logs}
chmod 700 "$tmp/munge"
export SLURM_CONF=$tmp/slurm.conf
munged_pid= ctld_pid= slurmd_pid= policy_rc=

stop_pid() {  # TERM, then KILL if it lingers
    local pid=$1 i
    [ -n "$pid" ] || return 0
    kill "$pid" 2>/dev/null || return 0
    for i in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    [ -z "$policy_rc" ] || rm -f "$policy_rc"
    if [ -n "$ctld_pid" ] && kill -0 "$ctld_pid" 2>/dev/null; then
        # Cancel leftover tasks first: killing slurmd alone would orphan their job steps.
        scancel --quiet --user=root 2>/dev/null
        for _ in $(seq 40); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
    fi
    stop_pid "$slurmd_pid"; stop_pid "$ctld_pid"; stop_pid "$munged_pid"
    if [ "$rc" -ne 0 ] || [ -n "${KDX_SLURM_KEEP:-}" ]; then
        for f in "$tmp"/log/*.log "$tmp"/log/*.stderr "$tmp"/logs/*; do
            [ "$rc" -ne 0 ] && [ -s "$f" ] || continue
            # A daemon's stderr repeats its log file; it matters when it died before opening it.
            [[ $f != *.stderr || ! -s ${f%.stderr}.log ]] || continue
            printf '\n--- tail of %s\n' "$f" >&2; tail -n 25 "$f" >&2
        done
        say "exit $rc; everything is kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- Packages -------------------------------------------------------------------------------
missing=
for tool in slurmctld slurmd sbatch squeue scancel scontrol sinfo munged munge unmunge; do
    command -v "$tool" >/dev/null || missing+=" $tool"
done
if [ -n "$missing" ]; then
    say "installing slurm-wlm and munge (missing:$missing)"
    # Their maintainer scripts would start system-wide daemons on the default config.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy_rc=/usr/sbin/policy-rc.d
        printf '#!/bin/sh\nexit 101\n' > "$policy_rc"
        chmod +x "$policy_rc"
    fi
    { apt-get update &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge
    } >"$tmp/log/apt.log" 2>&1 || die "apt-get failed; see $tmp/log/apt.log"
    if [ -n "$policy_rc" ]; then rm -f "$policy_rc"; policy_rc=; fi
fi

# --- Cluster --------------------------------------------------------------------------------
port_free() { ! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
port_free $ctld_port && port_free $slurmd_port ||
    die "port $ctld_port or $slurmd_port is taken (a leftover slurmctld/slurmd from an earlier run?)"

dd if=/dev/urandom of="$tmp/munge/munge.key" bs=1024 count=1 status=none
chmod 400 "$tmp/munge/munge.key"
# Foreground daemons in the background: their pids are known at once, even if they die
# before writing a pid file. (munged -F logs to stderr only.)
munged -F --key-file="$tmp/munge/munge.key" --socket="$tmp/run/munge.sock" \
    --pid-file="$tmp/run/munged.pid" --seed-file="$tmp/munge/munged.seed" \
    >"$tmp/log/munged.log" 2>&1 &
munged_pid=$!

wait_for() {  # SECONDS WHAT COMMAND...
    local secs=$1 what=$2 end=$((SECONDS + $1))
    shift 2
    until "$@"; do
        ((SECONDS < end)) || die "timed out after ${secs}s waiting for $what"
        sleep 0.25
    done
}
alive() { local p; for p in "$@"; do kill -0 "$p" 2>/dev/null || die "a daemon (pid $p) died; see $tmp/log"; done; }
munge_ok() { alive "$munged_pid"; munge -n -S "$tmp/run/munge.sock" 2>/dev/null | unmunge -S "$tmp/run/munge.sock" >/dev/null 2>&1; }
wait_for 20 munged munge_ok

# The node is the real short hostname (slurmd finds itself by it) at 127.0.0.1, so nothing
# depends on how the hostname resolves. No cgroup plugins: containers and VMs without systemd
# rarely have a usable cgroup tree. task/affinity still pins each task to its core, as on a
# real cluster, which is what kdx's "cores / jobs" thread count sees.
# MailProg: Debian's default (mail) is not installed, and slurmctld logs an error for it.
node=$(uname -n); node=${node%%.*}
cat > "$SLURM_CONF" <<EOF
ClusterName=kdxtest
SlurmctldHost=localhost
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/run/munge.sock
StateSaveLocation=$tmp/state
SlurmdSpoolDir=$tmp/spool
SlurmctldPidFile=$tmp/run/slurmctld.pid
SlurmdPidFile=$tmp/run/slurmd.pid
SlurmctldLogFile=$tmp/log/slurmctld.log
SlurmdLogFile=$tmp/log/slurmd.log
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
NodeName=$node NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=1024 State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF

say "starting munged, slurmctld and slurmd in $tmp"
slurmctld -D -f "$SLURM_CONF" >"$tmp/log/slurmctld.stderr" 2>&1 &
ctld_pid=$!
slurmd -D -f "$SLURM_CONF" >"$tmp/log/slurmd.stderr" 2>&1 &
slurmd_pid=$!
node_idle() { alive "$ctld_pid" "$slurmd_pid"; [ "$(sinfo -h -N -o %t 2>/dev/null)" = idle ]; }
wait_for 60 "the node to be idle in sinfo" node_idle
say "cluster up: node $node, $(nproc) CPUs"

# --- Local reference ------------------------------------------------------------------------
say "local reference: kdx batch $recipes"
"$KDX" batch "$recipes" --results "$tmp/local" >"$tmp/logs/local.out" 2>&1 ||
    die "the local batch failed: $(tail -n 5 "$tmp/logs/local.out")"

for ((k = 0; k < shards; k++)); do
    "$KDX" batch "$recipes" --dry-run --shard "$k/$shards" --results "$tmp/cluster" >"$tmp/shard-$k.txt"
done
killed_task=$(grep -l "^run  *$killed " "$tmp"/shard-*.txt | sed 's/.*shard-\([0-9]*\)\.txt/\1/')
[ -n "$killed_task" ] || die "no shard owns $killed: $(cat "$tmp"/shard-*.txt)"

# --- The array of docs/cluster.md, sized for this machine -----------------------------------
cat > "$tmp/kdx.sbatch" <<EOF
#!/bin/bash
#SBATCH --job-name=kdx-sweep
#SBATCH --array=0-$((shards - 1))
#SBATCH --cpus-per-task=1
#SBATCH --mem=400M
#SBATCH --time=00:10:00
#SBATCH --output=$tmp/logs/kdx-%A_%a.out

set -euo pipefail
cd "\$SLURM_SUBMIT_DIR"

$(printf %q "$KDX") batch $recipes --shard "\$SLURM_ARRAY_TASK_ID/$shards" --jobs 1 --results $(printf %q "$tmp/cluster")
EOF

submit() { local id; id=$(sbatch --parsable "$tmp/kdx.sbatch") || die "sbatch failed"; echo "${id%%;*}"; }
array_done() { alive "$ctld_pid" "$slurmd_pid"; [ -z "$(squeue -h -j "$1" -o %i 2>/dev/null)" ]; }
record_states() {  # PASS JOB: one line per task, read by check.py
    local k line
    for ((k = 0; k < shards; k++)); do
        line=$(scontrol -o show job "$2_$k") || die "scontrol knows no task $2_$k"
        printf '%s %s %s %s\n' "$1" "$k" \
            "$(grep -o 'JobState=[A-Z_]*' <<<"$line" | cut -d= -f2)" \
            "$(grep -o 'ExitCode=[0-9:]*' <<<"$line" | cut -d= -f2)" >>"$tmp/states.txt"
    done
}
# Past the first checkpoint of the distillation stage: an evaluation (which checkpoints) and
# a training step after it, so that the cancel interrupts a run that has something to resume.
past_checkpoint() {
    array_done "$job1" && die "the array ended before $killed got past its first checkpoint"
    awk '/"type":"evaluated","stage":"distill"/ { e = 1 }
         e && /"type":"step","stage":"distill"/ { found = 1; exit }
         END { exit !found }' "$tmp/cluster/$killed/batch.log" 2>/dev/null
}

job1=$(submit)
say "pass 1: array $job1 ($shards tasks); will cancel task $killed_task, which runs $killed"
wait_for 180 "$killed to pass its first checkpoint" past_checkpoint
scancel "${job1}_$killed_task"
say "cancelled task ${job1}_$killed_task"
wait_for 180 "array $job1 to end" array_done "$job1"
record_states 1 "$job1"
cp "$tmp/cluster/summary.csv" "$tmp/summary-pass1.csv" 2>/dev/null || : >"$tmp/summary-pass1.csv"

job2=$(submit)
say "pass 2: array $job2, the same script again"
wait_for 240 "array $job2 to end" array_done "$job2"
record_states 2 "$job2"

# --- Checks ---------------------------------------------------------------------------------
say "checking"
python3 "$here/check.py" --tmp "$tmp" --shards "$shards" --killed "$killed" \
    --killed-task "$killed_task" --jobs "$job1" "$job2"
say "passed"
