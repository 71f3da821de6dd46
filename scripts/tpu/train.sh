#!/usr/bin/env bash
# Train (or embed with) one config on a TPU pod slice, through preemptions:
# the slice is created if missing, set up, and the run started on every
# worker; when the slice is preempted or gone, or the run exits 75, the slice is
# recreated and set up again and the same command resumes from the last
# checkpoint in the gs:// workdir (at most --max_retries times). A run that
# stopped on a lost host or a stalled step restarts on the same slice when every
# worker answers (common.sh: run_with_recovery).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
usage: $PROG [options] CONFIG [-- extra gld_jax.main flags]

CONFIG is configs/NAME.py (or NAME). On every worker this runs
  GLD_JAX_DISTRIBUTED=1 python -m gld_jax.main --config configs/NAME.py \\
      --workdir gs://BUCKET/runs/NAME_foldK --config.fold=K \\
      --config.tfrecord_dir=gs://BUCKET/gldv2_tfrecords --mode MODE [extra flags]

options (slice options also as environment variables in capitals):
  --tpu_name NAME --zone ZONE [--project P]   the slice           (required)
  --accelerator_type TYPE [--runtime_version V]  to (re)create it  (required)
  --bucket BUCKET        gs://BUCKET holds the TFRecords and the runs (required
                         unless --workdir and --tfrecord_dir are both given)
  --spot | --queued      spot capacity; create through a queued resource
  --fold K               held-out fold, -1 = train on all         (default 0)
  --mode MODE            train, embed (train, then embed train and test), evaluate
                         or all                                   (default train)
  --workdir gs://...     default gs://BUCKET/runs/NAME_foldK (NAME_all for -1)
  --tfrecord_dir gs://...  default gs://BUCKET/gldv2_tfrecords
  --data_dir gs://...    GLDv2 root, passed as --config.data_dir when given
  --job NAME             job and log name on the workers  (default NAME_foldK.MODE)
  --skip_setup           the slice is set up already (setup still runs after a
                         recreation)
  --delete_after         delete the slice when the run succeeds
  --max_retries N        recoveries before giving up            (default 5)
  --retry_sleep S        seconds before each recovery           (default 60)
  --dry_run              print the commands, run none

Exit status: the run's (0 ok, 2 usage/config error, 3 diverged: neither is
retried), 75 when still preempted (or losing a host) after the last retry, or
when the same host was lost MAX_SAME_HOST (3) runs in a row; 1 when no slice.
EOF
}

CONFIG=""
FOLD=0
MODE=train
WORKDIR=""
TFRECORD_DIR=""
DATA_DIR=""
JOB=""
SKIP_SETUP=0
DELETE_AFTER=0
EXTRA=()
while (($#)); do
  opt=$1
  [[ $opt == --* && $opt != -- ]] && opt=$(normalize_opt "$opt")
  case $opt in
    -h | --help) usage; exit 0 ;;
    --fold | --fold=*) take_value "$opt" "${@:2}"; FOLD=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --mode | --mode=*) take_value "$opt" "${@:2}"; MODE=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --workdir | --workdir=*) take_value "$opt" "${@:2}"; WORKDIR=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --tfrecord_dir | --tfrecord_dir=*) take_value "$opt" "${@:2}"; TFRECORD_DIR=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --data_dir | --data_dir=*) take_value "$opt" "${@:2}"; DATA_DIR=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --job | --job=*) take_value "$opt" "${@:2}"; JOB=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --skip_setup) SKIP_SETUP=1; shift ;;
    --delete_after) DELETE_AFTER=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -*)
      if parse_common_opt "$opt" "${@:2}"; then shift "$OPT_SHIFT"; else usage_error "unknown option '$1'"; fi
      ;;
    *)
      [[ -z $CONFIG ]] || usage_error "one CONFIG only, got '$CONFIG' and '$1'"
      CONFIG=$1
      shift
      ;;
  esac
done

[[ -n $CONFIG ]] || usage_error "no CONFIG: $PROG [options] configs/NAME.py"
NAME=$(basename "$CONFIG" .py)
[[ $NAME =~ ^[A-Za-z0-9_]+$ ]] || usage_error "bad config name '$CONFIG'"
[[ $CONFIG == */* ]] || CONFIG=configs/$NAME.py
[[ $CONFIG == *.py ]] || usage_error "CONFIG must be a .py file, got '$CONFIG'"
[[ $FOLD =~ ^(-1|[0-9]+)$ ]] || usage_error "--fold must be -1 or a fold number, got '$FOLD'"
case $MODE in train | embed | evaluate | all) ;; *) usage_error "--mode must be train, embed, evaluate or all, got '$MODE'" ;; esac
check_common create
if [[ -z $WORKDIR || -z $TFRECORD_DIR ]]; then check_bucket; fi
if ((FOLD < 0)); then RUN=${NAME}_all; else RUN=${NAME}_fold$FOLD; fi
: "${WORKDIR:=gs://$BUCKET/runs/$RUN}" "${TFRECORD_DIR:=gs://$BUCKET/gldv2_tfrecords}"
[[ $WORKDIR == gs://?* ]] ||
  usage_error "--workdir must be on Cloud Storage (gs://...): a worker's disk goes with a preempted slice"
: "${JOB:=$RUN.$MODE}"
check_job_name "$JOB"
announce_dry_run

CMD=(python -m gld_jax.main --config "$CONFIG" --workdir "$WORKDIR" "--config.fold=$FOLD"
  "--config.tfrecord_dir=$TFRECORD_DIR")
[[ -z $DATA_DIR ]] || CMD+=("--config.data_dir=$DATA_DIR")
CMD+=(--mode "$MODE")
CMD+=(${EXTRA[@]+"${EXTRA[@]}"})

log "$JOB: $(join_cmd "${CMD[@]}") on $TPU_NAME (logs: pod.sh logs --job $JOB)"
if ((SKIP_SETUP)); then NEED_SETUP=0; else NEED_SETUP=1; fi
rc=0
run_with_recovery "$JOB" all "GLD_JAX_DISTRIBUTED=1" "$(join_cmd "${CMD[@]}")" || rc=$?
if ((rc != 0)); then
  log "${RECOVERY_STOP:+error: }$JOB failed (exit $rc)${RECOVERY_STOP:+: $RECOVERY_STOP}; the slice $TPU_NAME is kept for inspection: pod.sh logs --job $JOB, pod.sh delete"
  exit "$rc"
fi
log "$JOB: finished; workdir $WORKDIR"
if ((DELETE_AFTER)); then delete_slice; fi
