# shellcheck shell=bash
# Shared by pod.sh, train.sh and ensemble.sh (sourced, not run): options and
# environment, the command echo and --dry_run, the slice's life cycle (create,
# wait until READY, delete, state), setup of every worker, detached jobs on the
# workers, and the retry loop that recreates a preempted slice.
#
# Every option has an environment variable of the same name in capitals
# (--tpu_name / TPU_NAME); an option given on the command line wins.
#
#   TPU_NAME           slice (TPU VM node) name                      required
#   ZONE               e.g. us-central2-b, europe-west4-a             required
#   PROJECT            Google Cloud project (gcloud's default if unset)
#   ACCELERATOR_TYPE   e.g. v3-32, v4-32, v5litepod-16           required to create
#   RUNTIME_VERSION    TPU VM image               default tpu-ubuntu2204-base
#   BUCKET             gs:// bucket of the TFRecords and runs ("gs://" optional)
#   SPOT=1             spot capacity (--spot)
#   QUEUED=1           create through a queued resource (--queued) instead of
#                      `tpu-vm create`; QUEUED_RESOURCE_ID defaults to TPU_NAME-qr
#   DRY_RUN=1          print the commands, run none (--dry_run)
#   REPO_URL, REPO_REF setup clones REPO_URL at REPO_REF (default: copy this
#                      checkout, uncommitted edits included, to every worker)
#   REMOTE_DIR         checkout on the workers, relative to home  default gld-jax
#   REMOTE_PYTHON      Python for the workers' venv               default python3.11
#   JAX_VERSION        jax[tpu] version        default: the jax pin of requirements.txt
#   SSH_FLAGS          extra flags for `tpu-vm ssh`/`scp` (e.g. --internal-ip)
#                      default --ssh-flag=-oServerAliveInterval=60
#   CREATE_FLAGS       extra flags for create (e.g. "--network=n --subnetwork=s")
#   MAX_RETRIES        recoveries (recreate / re-attach) per job       default 5
#   MAX_SAME_HOST      runs in a row that lose the same host before giving up  default 3
#   RETRY_SLEEP_S      pause before a recovery                         default 60
#   POLL_S             local polling interval while a slice starts     default 30
#   WAIT_TIMEOUT_S     give up waiting for READY       default 3600 (queued: 86400)
#   REMOTE_POLL_S      the workers' polling interval for a job's exit  default 30
#   GCLOUD             the gcloud binary                               default gcloud
#   DRY_RUN_STATE      the slice state a dry run assumes (ABSENT or READY)

set -euo pipefail

TPU_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$TPU_SCRIPTS_DIR/../.." && pwd)
PROG=$(basename "$0")

: "${TPU_NAME:=}" "${ZONE:=}" "${PROJECT:=}" "${ACCELERATOR_TYPE:=}" "${BUCKET:=}"
: "${RUNTIME_VERSION:=tpu-ubuntu2204-base}"
: "${SPOT:=0}" "${QUEUED:=0}" "${QUEUED_RESOURCE_ID:=}" "${DRY_RUN:=0}"
: "${REPO_URL:=}" "${REPO_REF:=}" "${REMOTE_DIR:=gld-jax}" "${REMOTE_PYTHON:=python3.11}"
: "${JAX_VERSION:=}" "${CREATE_FLAGS:=}"
: "${SSH_FLAGS=--ssh-flag=-oServerAliveInterval=60}"
: "${MAX_RETRIES:=5}" "${RETRY_SLEEP_S:=60}" "${POLL_S:=30}" "${WAIT_TIMEOUT_S:=}" "${MAX_SAME_HOST:=3}"
: "${REMOTE_POLL_S:=30}" "${GCLOUD:=gcloud}" "${DRY_RUN_STATE:=ABSENT}"

LIBTPU_INDEX=https://storage.googleapis.com/jax-releases/libtpu_releases.html

# Commands are echoed on fd 3 (the script's stdout), so that they show even
# when a query's output is captured with $(...).
exec 3>&1

log() { printf '[%s] %s\n' "$PROG" "$*" >&2; }
die() { log "error: $*"; exit 1; }
# Bad usage: one line on stderr, exit 2.
usage_error() {
  printf '%s: error: %s (see %s --help)\n' "$PROG" "$*" "$PROG" >&2
  exit 2
}
is_true() { case ${1:-} in 1 | true | True | TRUE | yes | on) return 0 ;; *) return 1 ;; esac }

# shquote WORD: WORD as one shell word (unchanged when it needs no quoting).
shquote() {
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# join_cmd ARG...: the arguments as one copy-pasteable shell command line.
join_cmd() {
  local out="" a
  for a in "$@"; do out+="${out:+ }$(shquote "$a")"; done
  printf '%s' "$out"
}

# run_cmd ARG...: echo the command, then run it unless this is a dry run.
run_cmd() {
  printf '+ %s\n' "$(join_cmd "$@")" >&3
  is_true "$DRY_RUN" && return 0
  "$@"
}

# query_cmd ARG...: a read-only command whose output is used. Echoed unless
# QUIET_QUERY=1; in a dry run it is not run and fails (state unknown).
QUIET_QUERY=0
query_cmd() {
  is_true "$QUIET_QUERY" || printf '+ %s\n' "$(join_cmd "$@")" >&3
  is_true "$DRY_RUN" && return 1
  "$@"
}

# --- options -------------------------------------------------------------------

# take_value "$@": the value of an option given as --opt=value or --opt value,
# in OPT_VALUE, and how many arguments it used, in OPT_SHIFT.
take_value() {
  if [[ $1 == *=* ]]; then
    OPT_VALUE=${1#*=}
    OPT_SHIFT=1
  elif (($# >= 2)); then
    OPT_VALUE=$2
    OPT_SHIFT=2
  else
    usage_error "${1} needs a value"
  fi
}

# normalize_opt OPT: --dry-run and --dry_run are the same option.
normalize_opt() {
  local name=${1%%=*} rest=""
  [[ $1 == *=* ]] && rest="=${1#*=}"
  name=${name//-/_}
  printf '%s' "--${name#__}$rest"
}

# parse_common_opt "$@": an option every script takes. Returns 1 if $1 is not
# one of them; otherwise sets the variable and OPT_SHIFT.
# shellcheck disable=SC2034 # OPT_SHIFT is read by the sourcing script
parse_common_opt() {
  OPT_SHIFT=1
  case $1 in
    --tpu_name | --tpu_name=* | --name | --name=*) take_value "$@"; TPU_NAME=$OPT_VALUE ;;
    --zone | --zone=*) take_value "$@"; ZONE=$OPT_VALUE ;;
    --project | --project=*) take_value "$@"; PROJECT=$OPT_VALUE ;;
    --accelerator_type | --accelerator_type=*) take_value "$@"; ACCELERATOR_TYPE=$OPT_VALUE ;;
    --runtime_version | --runtime_version=*) take_value "$@"; RUNTIME_VERSION=$OPT_VALUE ;;
    --bucket | --bucket=*) take_value "$@"; BUCKET=$OPT_VALUE ;;
    --queued_resource_id | --queued_resource_id=*) take_value "$@"; QUEUED_RESOURCE_ID=$OPT_VALUE ;;
    --repo_url | --repo_url=*) take_value "$@"; REPO_URL=$OPT_VALUE ;;
    --repo_ref | --repo_ref=*) take_value "$@"; REPO_REF=$OPT_VALUE ;;
    --max_retries | --max_retries=*) take_value "$@"; MAX_RETRIES=$OPT_VALUE ;;
    --retry_sleep | --retry_sleep=*) take_value "$@"; RETRY_SLEEP_S=$OPT_VALUE ;;
    --spot) SPOT=1 ;;
    --no_spot) SPOT=0 ;;
    --queued) QUEUED=1 ;;
    --no_queued) QUEUED=0 ;;
    --dry_run) DRY_RUN=1 ;;
    *) return 1 ;;
  esac
}

is_uint() { [[ $1 =~ ^[0-9]+$ ]]; }

# check_common [create]: validate what every script needs (name, zone), and
# with "create" what creating a slice needs; derive the rest.
check_common() {
  [[ -n $TPU_NAME ]] || usage_error "no TPU name: give --tpu_name or set TPU_NAME"
  [[ -n $ZONE ]] || usage_error "no zone: give --zone or set ZONE"
  [[ $TPU_NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] ||
    usage_error "bad TPU name '$TPU_NAME': lower-case letters, digits and '-', starting with a letter"
  if [[ ${1:-} == create ]]; then
    [[ -n $ACCELERATOR_TYPE ]] ||
      usage_error "no accelerator type: give --accelerator_type (e.g. v4-32) or set ACCELERATOR_TYPE"
    [[ -n $RUNTIME_VERSION ]] || usage_error "no runtime version: give --runtime_version or set RUNTIME_VERSION"
  fi
  is_uint "$MAX_RETRIES" || usage_error "--max_retries must be a whole number, got '$MAX_RETRIES'"
  is_uint "$RETRY_SLEEP_S" || usage_error "--retry_sleep must be whole seconds, got '$RETRY_SLEEP_S'"
  is_uint "$MAX_SAME_HOST" || usage_error "MAX_SAME_HOST must be a whole number, got '$MAX_SAME_HOST'"
  : "${QUEUED_RESOURCE_ID:=${TPU_NAME}-qr}"
  if [[ -z $WAIT_TIMEOUT_S ]]; then
    if is_true "$QUEUED"; then WAIT_TIMEOUT_S=86400; else WAIT_TIMEOUT_S=3600; fi
  fi
  LOC_FLAGS=(--zone "$ZONE")
  [[ -z $PROJECT ]] || LOC_FLAGS+=(--project "$PROJECT")
  SSH_EXTRA=()
  [[ -z $SSH_FLAGS ]] || read -r -a SSH_EXTRA <<<"$SSH_FLAGS"
  CREATE_EXTRA=()
  [[ -z $CREATE_FLAGS ]] || read -r -a CREATE_EXTRA <<<"$CREATE_FLAGS"
}

# announce_dry_run: say so once the options are checked (stderr stays one line
# on bad usage).
announce_dry_run() {
  if is_true "$DRY_RUN"; then log "dry run: printing the commands, running none"; fi
}

# check_bucket: BUCKET is required; strip gs:// and a trailing slash.
check_bucket() {
  [[ -n $BUCKET ]] || usage_error "no bucket: give --bucket or set BUCKET (gs://BUCKET holds the TFRecords and runs)"
  BUCKET=${BUCKET#gs://}
  BUCKET=${BUCKET%/}
  [[ $BUCKET =~ ^[a-z0-9][-a-z0-9_.]*[a-z0-9]$ ]] || usage_error "bad bucket name '$BUCKET'"
}

# export_common: hand the settings to child scripts (ensemble.sh -> train.sh).
export_common() {
  export TPU_NAME ZONE PROJECT ACCELERATOR_TYPE RUNTIME_VERSION BUCKET SPOT QUEUED \
    QUEUED_RESOURCE_ID DRY_RUN REPO_URL REPO_REF REMOTE_DIR REMOTE_PYTHON JAX_VERSION \
    SSH_FLAGS CREATE_FLAGS MAX_RETRIES RETRY_SLEEP_S POLL_S WAIT_TIMEOUT_S REMOTE_POLL_S GCLOUD \
    MAX_SAME_HOST
}

# --- the slice ------------------------------------------------------------------

# slice_state: the node's state (READY, CREATING, PREEMPTED, ...), or ABSENT when
# describe fails (no such node). A dry run assumes DRY_RUN_STATE: ABSENT (the
# plan shows the creation) until it has "created" the slice, then READY.
slice_state() {
  local out
  if out=$(query_cmd "$GCLOUD" compute tpus tpu-vm describe "$TPU_NAME" "${LOC_FLAGS[@]}" \
    --format='value(state)' 2>/dev/null); then
    printf '%s\n' "${out:-UNKNOWN}"
  elif is_true "$DRY_RUN"; then
    echo "$DRY_RUN_STATE"
  else
    echo ABSENT
  fi
}

# qr_state: the queued resource's state (WAITING_FOR_RESOURCES, ACTIVE,
# SUSPENDED, FAILED, ...) or ABSENT.
qr_state() {
  local out
  if out=$(query_cmd "$GCLOUD" compute tpus queued-resources describe "$QUEUED_RESOURCE_ID" \
    "${LOC_FLAGS[@]}" --format='value(state.state)' 2>/dev/null); then
    printf '%s\n' "${out:-UNKNOWN}"
  elif is_true "$DRY_RUN" && [[ $DRY_RUN_STATE == READY ]]; then
    echo ACTIVE
  else
    echo ABSENT
  fi
}

create_slice() {
  local spot=()
  is_true "$SPOT" && spot=(--spot)
  if is_true "$QUEUED"; then
    run_cmd "$GCLOUD" compute tpus queued-resources create "$QUEUED_RESOURCE_ID" \
      --node-id "$TPU_NAME" "${LOC_FLAGS[@]}" --accelerator-type "$ACCELERATOR_TYPE" \
      --runtime-version "$RUNTIME_VERSION" ${spot[@]+"${spot[@]}"} \
      ${CREATE_EXTRA[@]+"${CREATE_EXTRA[@]}"}
  else
    run_cmd "$GCLOUD" compute tpus tpu-vm create "$TPU_NAME" "${LOC_FLAGS[@]}" \
      --accelerator-type "$ACCELERATOR_TYPE" --version "$RUNTIME_VERSION" \
      ${spot[@]+"${spot[@]}"} ${CREATE_EXTRA[@]+"${CREATE_EXTRA[@]}"}
  fi
}

delete_slice() {
  if is_true "$QUEUED"; then
    # --force deletes the queued resource together with its node.
    run_cmd "$GCLOUD" compute tpus queued-resources delete "$QUEUED_RESOURCE_ID" \
      "${LOC_FLAGS[@]}" --force --quiet
  else
    run_cmd "$GCLOUD" compute tpus tpu-vm delete "$TPU_NAME" "${LOC_FLAGS[@]}" --quiet
  fi
}

# wait_ready: poll until the node is READY; fail when it is preempted or gone,
# when its queued resource fails, or after WAIT_TIMEOUT_S.
wait_ready() {
  local start=$SECONDS state qstate
  if is_true "$DRY_RUN"; then
    slice_state >/dev/null
    return 0
  fi
  while :; do
    state=$(slice_state)
    QUIET_QUERY=1
    case $state in
      READY)
        QUIET_QUERY=0
        log "slice $TPU_NAME is READY"
        return 0
        ;;
      PREEMPTED | TERMINATED | STOPPED | STOPPING | DELETING | HIDING | HIDDEN)
        QUIET_QUERY=0
        log "slice $TPU_NAME is $state"
        return 1
        ;;
    esac
    if is_true "$QUEUED"; then
      qstate=$(qr_state)
      case $qstate in
        FAILED | SUSPENDING | SUSPENDED | DELETING | ABSENT)
          QUIET_QUERY=0
          log "queued resource $QUEUED_RESOURCE_ID is $qstate"
          return 1
          ;;
      esac
      state="$state (queued resource: $qstate)"
    elif [[ $state == ABSENT ]]; then
      QUIET_QUERY=0
      log "slice $TPU_NAME does not exist"
      return 1
    fi
    if ((SECONDS - start >= WAIT_TIMEOUT_S)); then
      QUIET_QUERY=0
      log "slice $TPU_NAME not READY after ${WAIT_TIMEOUT_S}s (state $state)"
      return 1
    fi
    log "waiting for $TPU_NAME: $state (polling every ${POLL_S}s)"
    sleep "$POLL_S"
  done
}

# prepare_slice FORCE: make sure a READY slice exists. An existing READY slice
# is kept unless FORCE=1; a starting one is waited for; a preempted, stopped or
# failed one (and with FORCE=1 any) is deleted and created again. Sets
# SLICE_NEW=1 when the slice has (or may have) fresh disks that need setup.
SLICE_NEW=0
prepare_slice() {
  local force=${1:-0} state qstate=ABSENT
  SLICE_NEW=0
  state=$(slice_state)
  is_true "$QUEUED" && qstate=$(qr_state)
  if ! is_true "$force"; then
    case $state in
      READY)
        log "slice $TPU_NAME is READY"
        return 0
        ;;
      CREATING | STARTING | RESTARTING | REPAIRING | REIMAGING)
        SLICE_NEW=1
        wait_ready
        return
        ;;
    esac
    if [[ $state == ABSENT ]] && is_true "$QUEUED"; then
      case $qstate in
        CREATING | ACCEPTED | WAITING_FOR_RESOURCES | PROVISIONING | ACTIVE)
          SLICE_NEW=1
          wait_ready
          return
          ;;
      esac
    fi
  fi
  if [[ $state != ABSENT || $qstate != ABSENT ]]; then
    if is_true "$QUEUED"; then state+=", queued resource $qstate"; fi
    log "deleting slice $TPU_NAME (state $state)"
    delete_slice || log "delete failed; creating anyway"
  fi
  SLICE_NEW=1
  create_slice || return 1
  DRY_RUN_STATE=READY
  wait_ready
}

# --- setup ----------------------------------------------------------------------

# jax_version: the jax pin of requirements.txt (jax[cpu]==X -> X), or JAX_VERSION.
jax_version() {
  local line
  if [[ -n $JAX_VERSION ]]; then
    printf '%s' "$JAX_VERSION"
    return 0
  fi
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ ^jax(\[[^]]*\])?==([^[:space:]\;]+) ]]; then
      printf '%s' "${BASH_REMATCH[2]}"
      return 0
    fi
  done <"$REPO_ROOT/requirements.txt"
  die "no jax==VERSION line in $REPO_ROOT/requirements.txt; set JAX_VERSION"
}

# The shell script each worker runs to install Python and the pinned
# requirements, then jax[tpu] in place of the CPU jax.
install_script() {
  local py jax_pkg apt version
  version=$(jax_version) || return 1
  py=$(shquote "$REMOTE_PYTHON")
  jax_pkg=$(shquote "jax[tpu]==$version")
  apt="sudo DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -q"
  printf '%s' "if ! command -v $py >/dev/null 2>&1; then"
  printf '%s' " { $apt update && $apt install -y $py $py-venv; } ||"
  printf '%s' " { sudo add-apt-repository -y ppa:deadsnakes/ppa && $apt update && $apt install -y $py $py-venv; };"
  printf '%s' " fi;"
  printf '%s' " [ -x .venv/bin/python ] || $py -m venv .venv;"
  printf '%s' " .venv/bin/python -m pip install -q --upgrade pip;"
  printf '%s' " .venv/bin/python -m pip install -q -r requirements.txt;"
  printf '%s' " .venv/bin/python -m pip install -q $jax_pkg -f $LIBTPU_INDEX;"
  printf '%s' " .venv/bin/python -c 'import jax, gld_jax; print(\"gld-jax ready on\", __import__(\"socket\").gethostname(), \"jax\", jax.__version__)'"
}

# make_tarball DEST: this checkout's files (tracked and untracked, not ignored).
make_tarball() {
  local dest=$1
  printf '+ %s\n' "git -C $(shquote "$REPO_ROOT") ls-files -z -co --exclude-standard | tar -czf $(shquote "$dest") -C $(shquote "$REPO_ROOT") --null -T -" >&3
  is_true "$DRY_RUN" && return 0
  git -C "$REPO_ROOT" rev-parse --git-dir >/dev/null 2>&1 ||
    die "$REPO_ROOT is not a git checkout: set REPO_URL to clone instead"
  git -C "$REPO_ROOT" ls-files -z -co --exclude-standard |
    while IFS= read -r -d '' f; do
      if [[ -e $REPO_ROOT/$f ]]; then printf '%s\0' "$f"; fi
    done |
    tar -czf "$dest" -C "$REPO_ROOT" --null -T -
}

# setup_slice: put the code on every worker (copy of this checkout, or a clone
# of REPO_URL) and install the environment there. Idempotent.
setup_slice() {
  local dir fetch tmp="" tarball rc=0 ref install
  install=$(install_script) || return 1
  dir=$(shquote "$REMOTE_DIR")
  if [[ -n $REPO_URL ]]; then
    ref=$(shquote "${REPO_REF:-HEAD}")
    fetch="{ [ -d $dir/.git ] || git clone -q $(shquote "$REPO_URL") $dir; }"
    fetch+=" && git -C $dir fetch -q origin $ref && git -C $dir checkout -q --detach FETCH_HEAD"
  else
    if is_true "$DRY_RUN"; then
      tarball=${TMPDIR:-/tmp}/gld-jax-setup/gld-jax.tar.gz
    else
      tmp=$(mktemp -d "${TMPDIR:-/tmp}/gld-jax-setup.XXXXXX")
      tarball=$tmp/gld-jax.tar.gz
    fi
    make_tarball "$tarball" || rc=$?
    if ((rc == 0)); then
      run_cmd "$GCLOUD" compute tpus tpu-vm scp "$tarball" "$TPU_NAME:gld-jax.tar.gz" \
        "${LOC_FLAGS[@]}" --worker=all ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} || rc=$?
    fi
    [[ -z $tmp ]] || rm -rf "$tmp"
    ((rc == 0)) || return "$rc"
    # Replace the code, keep the venv and the job logs.
    fetch="mkdir -p $dir && find $dir -mindepth 1 -maxdepth 1 ! -name .venv ! -name logs -exec rm -rf {} +"
    fetch+=" && tar -xzf gld-jax.tar.gz -C $dir && rm -f gld-jax.tar.gz"
  fi
  tpu_ssh all ": gld-jax setup; set -e; $fetch; cd $dir; $install"
}

# --- commands on the workers ------------------------------------------------------

# tpu_ssh WORKER COMMAND: run COMMAND on WORKER (all, or a number).
tpu_ssh() {
  run_cmd "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${LOC_FLAGS[@]}" "--worker=$1" \
    ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command "$2"
}

check_job_name() {
  [[ $1 =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]] || usage_error "bad job name '$1': letters, digits, '_', '.', '-'"
}

# A job runs detached on each worker (setsid nohup), in REMOTE_DIR with the
# venv first on PATH; output goes to REMOTE_DIR/logs/JOB.log, the exit status
# to logs/JOB.rc, "pid boot_id" to logs/JOB.pid. Launching a job that is still
# running attaches to it instead of starting a second copy.
# shellcheck disable=SC2016 # expanded on the worker, not here
ALIVE_TEST='read -r pid boot < logs/JOB.pid && [ "$boot" = "$(cat /proc/sys/kernel/random/boot_id)" ] && kill -0 "$pid" 2>/dev/null'

# launch_script JOB ENV COMMAND: ENV is "NAME=value ..." exported for COMMAND.
launch_script() {
  local job=$1 env=$2 cmd=$3 inner alive
  alive=${ALIVE_TEST//JOB/$job}
  inner="export PATH=\"\$PWD/.venv/bin:\$PATH\"${env:+ $env};"
  inner+=" echo \"== \$(date -u +%FT%TZ) $job: start on \$(hostname)\";"
  inner+=" $cmd"
  inner+="; rc=\$?; echo \"== \$(date -u +%FT%TZ) $job: exit \$rc\";"
  inner+=" echo \$rc > logs/$job.rc.tmp && mv logs/$job.rc.tmp logs/$job.rc"
  printf '%s' ": gld-jax launch $job; cd $(shquote "$REMOTE_DIR") || exit 1; mkdir -p logs;"
  printf '%s' " if [ -f logs/$job.pid ] && $alive; then"
  printf '%s' " echo \"$job: already running on \$(hostname), attaching\"; exit 0; fi;"
  printf '%s' " rm -f logs/$job.rc;"
  printf '%s' " setsid nohup sh -c $(shquote "$inner") >> logs/$job.log 2>&1 < /dev/null &"
  printf '%s' " echo \"\$! \$(cat /proc/sys/kernel/random/boot_id)\" > logs/$job.pid;"
  printf '%s' " echo \"$job: started on \$(hostname), log $REMOTE_DIR/logs/$job.log\""
}

# wait_script JOB: block until JOB ends on this worker and exit with its status;
# 75 (like a preempted run) when it is gone without one (the VM restarted).
wait_script() {
  local job=$1 alive
  alive=${ALIVE_TEST//JOB/$job}
  printf '%s' ": gld-jax wait $job; cd $(shquote "$REMOTE_DIR") || exit 1;"
  printf '%s' " while :; do"
  printf '%s' " if [ -f logs/$job.rc ]; then rc=\$(cat logs/$job.rc);"
  printf '%s' " echo \"$job: exit \$rc on \$(hostname)\"; exit \"\$rc\"; fi;"
  printf '%s' " if [ -f logs/$job.pid ] && $alive; then sleep $REMOTE_POLL_S; continue; fi;"
  printf '%s' " [ -f logs/$job.rc ] && continue;"
  printf '%s' " echo \"$job: not running on \$(hostname) and no exit status\" >&2; exit 75;"
  printf '%s' " done"
}

# run_job JOB WORKER ENV COMMAND: start COMMAND on WORKER (all or a number) and
# wait for it; returns its exit status (the first failing worker's), or ssh's.
run_job() {
  local rc=0
  tpu_ssh "$2" "$(launch_script "$1" "$3" "$4")" || return $?
  tpu_ssh "$2" "$(wait_script "$1")" || rc=$?
  if ((rc == 0)); then log "$1: done on worker(s) $2"; fi
  return "$rc"
}

# stop_line_script JOB: print the last line of JOB's log on this worker that says
# why the run stopped ("lost host: ...", "stalled: ...", "preempted: ...").
stop_line_script() {
  local job=$1
  printf '%s' ": gld-jax reason $job; cd $(shquote "$REMOTE_DIR") || exit 0;"
  printf '%s' " grep -a -h -E '^(lost host|stalled|preempted): ' logs/$job.log 2>/dev/null | tail -n 1"
}

# end_job_script JOB: end what is left of JOB on this worker (a process that
# hung, a stopped one, the coordination service): its whole process group.
end_job_script() {
  local job=$1 alive
  alive=${ALIVE_TEST//JOB/$job}
  printf '%s' ": gld-jax end $job; cd $(shquote "$REMOTE_DIR") || exit 0;"
  printf '%s' " if [ -f logs/$job.pid ] && $alive; then"
  printf '%s' " kill -TERM -- -\"\$pid\" 2>/dev/null; sleep 5; kill -KILL -- -\"\$pid\" 2>/dev/null;"
  printf '%s' " echo \"$job: ended what was left on \$(hostname)\"; fi; true"
}

# stop_reason JOB: the reason the run of JOB gave for stopping (one line, from
# the workers' logs), empty when there is none.
stop_reason() {
  local out line
  is_true "$DRY_RUN" && return 0
  out=$(query_cmd "$GCLOUD" compute tpus tpu-vm ssh "$TPU_NAME" "${LOC_FLAGS[@]}" \
    --worker=all ${SSH_EXTRA[@]+"${SSH_EXTRA[@]}"} --command "$(stop_line_script "$1")" \
    2>/dev/null) || true
  # the survivors' line names the lost host; prefer it to the others
  line=$(grep -m 1 '^lost host: ' <<<"$out" || grep -m 1 -E '^(stalled|preempted): ' <<<"$out" || true)
  printf '%s' "$line"
}

# lost_host LINE: "process N (HOST)" from a "lost host: process N (HOST) ..." line.
lost_host() {
  if [[ $1 =~ ^lost\ host:\ (process\ [0-9]+\ \([^\)]*\)) ]]; then
    printf '%s' "${BASH_REMATCH[1]}"
  fi
}

# --- preemption-safe runs ---------------------------------------------------------

# Exit statuses of gld_jax.main (and of a job):
EXIT_USAGE=2      # usage or config error: not retried
EXIT_DIVERGED=3   # training diverged: not retried
EXIT_PREEMPTED=75 # preempted, a lost host, a stalled step: rerun resumes
EXIT_SSH=255      # ssh could not connect or lost the connection

# run_with_recovery JOB WORKER ENV COMMAND: run_job on a READY slice. When the
# slice is gone or not READY after a failure, or the job was preempted (exit
# 75), the slice is deleted and created again, set up, and the job started
# again (it resumes from its last checkpoint). When the run stopped on a lost
# host or a stalled step (exit 75 with "lost host:" or "stalled:"), what is left
# of the job is ended on every worker and the job restarts on the same slice;
# a worker that does not answer gets the slice recreated. A run that loses the
# same host MAX_SAME_HOST times in a row stops with one line naming it. The
# first ssh failure on a READY slice re-attaches to the still-running job
# instead (a second one since the slice was created recreates it: a worker may
# be unreachable). Exit statuses 2 and 3, and any other failure on a READY
# slice, end it. At most MAX_RETRIES recoveries, each logged with its reason.
# Set NEED_SETUP=1 to run setup before the first start.
# RECOVERY_STOP says why run_with_recovery gave up early (the same host lost
# again and again), for the caller's last line.
NEED_SETUP=1
# shellcheck disable=SC2034 # read by the sourcing script
RECOVERY_STOP=""
run_with_recovery() {
  local job=$1 worker=$2 env=$3 cmd=$4
  local retries=0 force=0 rc state reason ssh_failed=0 why host last_host="" same_host=0
  while :; do
    rc=0
    reason=""
    if ! prepare_slice "$force"; then
      rc=1
      reason="no READY slice"
    else
      if ((SLICE_NEW)); then NEED_SETUP=1; fi
      if ((NEED_SETUP)); then
        if setup_slice; then NEED_SETUP=0; else
          rc=$?
          reason="setup failed (exit $rc)"
        fi
      fi
    fi
    force=0
    if [[ -z $reason ]]; then
      run_job "$job" "$worker" "$env" "$cmd" || rc=$?
      case $rc in
        0) return 0 ;;
        "$EXIT_USAGE") log "$job: exit $rc (usage or config error), not retried"; return "$rc" ;;
        "$EXIT_DIVERGED") log "$job: exit $rc (training diverged), not retried"; return "$rc" ;;
      esac
      is_true "$DRY_RUN" && return "$rc"
      state=$(slice_state)
      why=""
      if [[ $state == READY && $rc == "$EXIT_PREEMPTED" ]]; then why=$(stop_reason "$job"); fi
      host=$(lost_host "$why")
      if [[ -n $host && $host == "$last_host" ]]; then same_host=$((same_host + 1)); else same_host=1; fi
      last_host=$host
      if [[ -n $host ]] && ((same_host >= MAX_SAME_HOST)); then
        # shellcheck disable=SC2034 # read by the sourcing script
        RECOVERY_STOP="lost $host in $same_host runs in a row; stopping"
        return "$rc"
      fi
      if [[ $state == READY && $rc == "$EXIT_SSH" && $ssh_failed == 0 ]]; then
        ssh_failed=1
        reason="ssh failed (exit $rc) on a READY slice: re-attaching"
      elif [[ $state == READY && ($why == "lost host: "* || $why == "stalled: "*) ]]; then
        ssh_failed=0
        if tpu_ssh all "$(end_job_script "$job")"; then
          reason="exit $rc ($why): every worker answers, restarting on this slice"
        else
          force=1
          reason="exit $rc ($why): a worker does not answer, recreating the slice"
        fi
      elif [[ $state != READY || $rc == "$EXIT_PREEMPTED" || $rc == "$EXIT_SSH" ]]; then
        ssh_failed=0
        force=1
        reason="exit $rc${why:+ ($why)}, slice $state: recreating the slice"
      else
        log "$job: exit $rc on a READY slice, not retried (see: pod.sh logs --job $job)"
        return "$rc"
      fi
    fi
    if ((retries >= MAX_RETRIES)); then
      log "$job: giving up after $retries retries (last: ${reason})"
      return "$rc"
    fi
    retries=$((retries + 1))
    log "$job: ${reason}; retry $retries of $MAX_RETRIES in ${RETRY_SLEEP_S}s"
    sleep "$RETRY_SLEEP_S"
  done
}
