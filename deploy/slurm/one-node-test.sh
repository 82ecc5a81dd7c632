#!/bin/bash
# A real Slurm on this machine: a one-node cluster (Debian's slurm-wlm and
# munge), the bundled sample run as an array of 4 shards plus the dependent
# merge (deploy/slurm/submit.sh), and the merged report compared byte for
# byte with a single run of the same configuration. Needs root (it installs
# packages and starts munged, slurmctld and slurmd) and the SmolLM2 model in
# the cache (`anjeon models fetch smollm2-135m-instruct`).
#   bash deploy/slurm/one-node-test.sh [path/to/anjeon]
set -euo pipefail
cd "$(dirname "$0")/../.."
ANJEON=$(realpath "${1:-target/release/anjeon}")
N=4
RUN_ARGS="--target smollm2-135m-instruct --judge refusal --limit 12 --max-new-tokens 8 --attacks prefix-injection"
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q slurm-wlm munge >/dev/null
fi
host=$(hostname -s)
work=$(mktemp -d /tmp/anjeon-slurm.XXXXXX)
chmod 755 "$work"
# munge: a key and the daemon.
mkdir -p /etc/munge /var/log/munge /run/munge /var/lib/munge
[ -s /etc/munge/munge.key ] || dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
chown -R munge:munge /etc/munge /var/log/munge /run/munge /var/lib/munge 2>/dev/null || true
chmod 400 /etc/munge/munge.key
pgrep -x munged >/dev/null || runuser -u munge -- munged 2>/dev/null || munged --force
# slurm: one node with this machine's CPUs; no cgroups (containers).
cpus=$(nproc)
mem=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 - 512 ))
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=anjeon-test
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
MpiDefault=none
NodeName=$host CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
pkill -x slurmctld 2>/dev/null || true
pkill -x slurmd 2>/dev/null || true
sleep 1
slurmctld -c
slurmd -c
for _ in $(seq 30); do sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix' && break; sleep 1; done
sinfo
# The array (2 CPUs per task: on a 2-core machine the tasks run one at a time).
ids=$(N=$N OUT="$work/runs" ANJEON="$ANJEON" RUN_ARGS="$RUN_ARGS" deploy/slurm/submit.sh)
echo "$ids"
merge_id=${ids##* }
for _ in $(seq 900); do
  state=$(scontrol show job "$merge_id" 2>/dev/null | sed -n 's/.*JobState=\([A-Z_]*\).*/\1/p' || true)
  case "$state" in COMPLETED|FAILED|CANCELLED*|TIMEOUT|DEPENDENCY_NEVER_SATISFIED) break;; esac
  sleep 2
done
ls "$work/runs"
[ -f "$work/runs/merged/report.json" ] || { echo "FAIL: no merged report"; tail -20 "$work"/runs/merge-*.log anjeon-*.log 2>/dev/null; exit 1; }
"$ANJEON" run $RUN_ARGS --out "$work/single" >/dev/null 2>&1 || [ $? -eq 1 ]
if cmp "$work/single/report.json" "$work/runs/merged/report.json"; then
  echo "PASS: the merged report of $N Slurm array tasks equals the single run's ($work)"
else
  echo "FAIL: merged report differs from the single run's ($work)"; exit 1
fi
rm -f anjeon-*_*.log
