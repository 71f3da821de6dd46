#!/usr/bin/env bash
# The whole recipe on TPU pod slices: (convert GLDv2 to TFRecords,) train and
# embed each of the six ensemble configs, then evaluate the ensemble into a
# Kaggle submission. Each train / embed goes through train.sh, so a preempted
# slice is recreated and the run resumes from its last checkpoint.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

DEFAULT_CONFIGS="effb3 effb4 effb5 effb6 effb7 resnest101"

usage() {
  cat <<EOF
usage: $PROG [options] [all|convert|train|evaluate] [-- extra flags]

  all       (the default) train, then evaluate
  convert   on worker 0: python -m tfrecords_tools.build_gldv2 --data_dir DATA_DIR
            --output_dir TFRECORD_DIR --from_tars --num_workers N
  train     for each config: train.sh CONFIG --mode train, then --mode embed
            (embeddings in RUNS_ROOT/NAME_foldK/embeddings/{train,test}); in
            sequence on the slice TPU_NAME, or with --parallel each on its own
            slice TPU_NAME-NAME at the same time
  evaluate  on worker 0 (or --eval_on local): python scripts/evaluate_scann.py
            --config configs/ensemble.py --config.runs_root=RUNS_ROOT --config.fold=K \
            --output OUTPUT

options (slice options also as environment variables in capitals):
  --tpu_name NAME --zone ZONE [--project P] --bucket BUCKET         (required)
  --accelerator_type TYPE [--runtime_version V]   (required, except for
                         evaluate --eval_on local)
  --spot | --queued      spot capacity; create through a queued resource
  --configs "A B ..."    configs to run (default: $DEFAULT_CONFIGS)
  --parallel             one slice per config, all at once
  --fold K               held-out fold, -1 = train on all (default 0)
  --runs_root gs://...   the runs' parent folder       (default gs://BUCKET/runs)
  --tfrecord_dir gs://...  TFRecords           (default gs://BUCKET/gldv2_tfrecords)
  --data_dir gs://...    GLDv2 as downloaded, for convert   (default gs://BUCKET/gldv2)
  --num_workers N        convert's worker processes         (default 96)
  --output PATH          submission        (default gs://BUCKET/submission.csv)
  --eval_on worker0|local  where evaluate runs                (default worker0)
  --skip_setup           the slice(s) are set up already
  --delete_after         delete each slice when its work is done
  --max_retries N --retry_sleep S   preemption recoveries per run (5, 60 s)
  --dry_run              print the commands, run none

Extra flags after -- go to build_gldv2 (convert), gld_jax.main (train, all) or
evaluate_scann.py (evaluate).
EOF
}

SUBCMD=""
CONFIGS=$DEFAULT_CONFIGS
PARALLEL=0
FOLD=0
RUNS_ROOT=""
TFRECORD_DIR=""
DATA_DIR=""
NUM_WORKERS=96
OUTPUT=""
EVAL_ON=worker0
SKIP_SETUP=0
DELETE_AFTER=0
EXTRA=()
while (($#)); do
  opt=$1
  [[ $opt == --* && $opt != -- ]] && opt=$(normalize_opt "$opt")
  case $opt in
    -h | --help) usage; exit 0 ;;
    --configs | --configs=*) take_value "$opt" "${@:2}"; CONFIGS=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --fold | --fold=*) take_value "$opt" "${@:2}"; FOLD=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --runs_root | --runs_root=*) take_value "$opt" "${@:2}"; RUNS_ROOT=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --tfrecord_dir | --tfrecord_dir=*) take_value "$opt" "${@:2}"; TFRECORD_DIR=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --data_dir | --data_dir=*) take_value "$opt" "${@:2}"; DATA_DIR=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --num_workers | --num_workers=*) take_value "$opt" "${@:2}"; NUM_WORKERS=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --output | --output=*) take_value "$opt" "${@:2}"; OUTPUT=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --eval_on | --eval_on=*) take_value "$opt" "${@:2}"; EVAL_ON=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --parallel) PARALLEL=1; shift ;;
    --skip_setup) SKIP_SETUP=1; shift ;;
    --delete_after) DELETE_AFTER=1; shift ;;
    --) shift; EXTRA=("$@"); break ;;
    -*)
      if parse_common_opt "$opt" "${@:2}"; then shift "$OPT_SHIFT"; else usage_error "unknown option '$1'"; fi
      ;;
    *)
      [[ -z $SUBCMD ]] || usage_error "unexpected argument '$1'"
      SUBCMD=$1
      shift
      ;;
  esac
done

: "${SUBCMD:=all}"
case $SUBCMD in
  all | convert | train | evaluate) ;;
  *) usage_error "unknown sub-command '$SUBCMD': all, convert, train or evaluate" ;;
esac
case $EVAL_ON in worker0 | local) ;; *) usage_error "--eval_on must be worker0 or local, got '$EVAL_ON'" ;; esac
[[ $FOLD =~ ^(-1|[0-9]+)$ ]] || usage_error "--fold must be -1 or a fold number, got '$FOLD'"
is_uint "$NUM_WORKERS" || usage_error "--num_workers must be a number, got '$NUM_WORKERS'"
read -r -a CONFIG_LIST <<<"${CONFIGS//,/ }"
((${#CONFIG_LIST[@]})) || usage_error "--configs is empty"
NAMES=()
for c in "${CONFIG_LIST[@]}"; do
  n=$(basename "$c" .py)
  [[ $n =~ ^[a-z0-9_]+$ ]] || usage_error "bad config name '$c'"
  NAMES+=("$n")
done
if [[ $SUBCMD == evaluate && $EVAL_ON == local ]]; then
  [[ -n $TPU_NAME ]] || TPU_NAME=unused # no slice needed
  [[ -n $ZONE ]] || ZONE=unused
  check_common
else
  check_common create
fi
check_bucket
: "${RUNS_ROOT:=gs://$BUCKET/runs}" "${TFRECORD_DIR:=gs://$BUCKET/gldv2_tfrecords}"
: "${DATA_DIR:=gs://$BUCKET/gldv2}" "${OUTPUT:=gs://$BUCKET/submission.csv}"
RUNS_ROOT=${RUNS_ROOT%/}
[[ $RUNS_ROOT == gs://?* ]] || usage_error "--runs_root must be on Cloud Storage (gs://...)"
announce_dry_run
export_common
BASE_NAME=$TPU_NAME

run_name() { if ((FOLD < 0)); then echo "${1}_all"; else echo "${1}_fold$FOLD"; fi; }
slice_for() { if ((PARALLEL)); then echo "$BASE_NAME-${1//_/-}"; else echo "$BASE_NAME"; fi; }

# train_config NAME SETUP DELETE: train, then embed one config on TPU_NAME.
train_config() {
  local name=$1 setup=$2 delete=$3 run common=()
  run=$(run_name "$name")
  common=(--fold "$FOLD" --workdir "$RUNS_ROOT/$run" --tfrecord_dir "$TFRECORD_DIR")
  local first=("${common[@]}") second=("${common[@]}" --skip_setup)
  if ((!setup)); then first+=(--skip_setup); fi
  if ((delete)); then second+=(--delete_after); fi
  bash "$TPU_SCRIPTS_DIR/train.sh" "configs/$name.py" --mode train "${first[@]}" \
    ${EXTRA[@]+-- "${EXTRA[@]}"} || return
  DRY_RUN_STATE=READY bash "$TPU_SCRIPTS_DIR/train.sh" "configs/$name.py" --mode embed "${second[@]}" \
    ${EXTRA[@]+-- "${EXTRA[@]}"}
}

# prefix_lines TAG: copy stdin to stdout, each line as "[TAG] line".
prefix_lines() {
  local line
  while IFS= read -r line || [[ -n $line ]]; do printf '[%s] %s\n' "$1" "$line"; done
}

# train_all KEEP: train and embed every config; KEEP = a slice to keep (not
# deleted with --delete_after) because evaluation runs on it next.
train_all() {
  local keep=$1 i name slice pids=() rc=0 failed=() setup delete
  if ((!PARALLEL)); then
    setup=$((!SKIP_SETUP))
    for name in "${NAMES[@]}"; do
      train_config "$name" "$setup" 0 || {
        rc=$?
        log "$name failed (exit $rc); the remaining configs are not run"
        return "$rc"
      }
      setup=0
      export DRY_RUN_STATE=READY # a dry run: the first config "created" the slice
    done
    return 0
  fi
  for name in "${NAMES[@]}"; do
    slice=$(slice_for "$name")
    delete=$DELETE_AFTER
    [[ $slice != "$keep" ]] || delete=0
    (
      export TPU_NAME=$slice QUEUED_RESOURCE_ID=$slice-qr
      train_config "$name" $((!SKIP_SETUP)) "$delete" 2>&1 | prefix_lines "$name"
    ) &
    pids+=("$!")
    log "$name: started on slice $slice (pid $!)"
  done
  for i in "${!pids[@]}"; do
    if ! wait "${pids[$i]}"; then
      failed+=("${NAMES[$i]}")
    fi
  done
  if ((${#failed[@]})); then
    log "failed: ${failed[*]} (their slices are kept: pod.sh logs / pod.sh delete)"
    return 1
  fi
}

convert() {
  local cmd
  cmd=(python -m tfrecords_tools.build_gldv2 --data_dir "$DATA_DIR" --output_dir "$TFRECORD_DIR"
    --from_tars --num_workers "$NUM_WORKERS" ${EXTRA[@]+"${EXTRA[@]}"})
  NEED_SETUP=$((!SKIP_SETUP))
  run_with_recovery convert 0 "JAX_PLATFORMS=cpu" "$(join_cmd "${cmd[@]}")"
}

# evaluate SETUP: the ensemble's submission, on worker 0 of TPU_NAME or here.
evaluate() {
  local cmd extra=()
  [[ $SUBCMD != evaluate ]] || extra=(${EXTRA[@]+"${EXTRA[@]}"})
  cmd=(python scripts/evaluate_scann.py --config configs/ensemble.py
    "--config.runs_root=$RUNS_ROOT" "--config.fold=$FOLD" --output "$OUTPUT"
    ${extra[@]+"${extra[@]}"})
  if [[ $EVAL_ON == local ]]; then
    local py=$REPO_ROOT/.venv/bin/python
    [[ -x $py ]] || py=python3
    (cd "$REPO_ROOT" && run_cmd "$py" "${cmd[@]:1}")
  else
    NEED_SETUP=$1
    run_with_recovery ensemble.evaluate 0 "JAX_PLATFORMS=cpu" "$(join_cmd "${cmd[@]}")"
  fi
}

# use_eval_slice: evaluation runs on worker 0 of TPU_NAME, or with --parallel
# of the first config's slice.
use_eval_slice() {
  if ((PARALLEL)); then
    TPU_NAME=$(slice_for "${NAMES[0]}")
    QUEUED_RESOURCE_ID=$TPU_NAME-qr
  fi
}

rc=0
case $SUBCMD in
  convert)
    convert || rc=$?
    if ((rc == 0 && DELETE_AFTER)); then delete_slice; fi
    ;;
  train)
    train_all "" || rc=$?
    if ((rc == 0 && DELETE_AFTER && !PARALLEL)); then delete_slice; fi
    ;;
  evaluate)
    use_eval_slice
    evaluate $((!SKIP_SETUP)) || rc=$?
    if ((rc == 0 && DELETE_AFTER)) && [[ $EVAL_ON == worker0 ]]; then delete_slice; fi
    ;;
  all)
    eval_slice=""
    [[ $EVAL_ON == local ]] || eval_slice=$(slice_for "${NAMES[0]}")
    train_all "$eval_slice" || rc=$?
    if ((rc == 0 && DELETE_AFTER && !PARALLEL)) && [[ $EVAL_ON == local ]]; then delete_slice; fi
    if ((rc == 0)); then
      DRY_RUN_STATE=READY
      use_eval_slice
      evaluate 0 || rc=$?
    fi
    if ((rc == 0 && DELETE_AFTER)) && [[ $EVAL_ON == worker0 ]]; then delete_slice; fi
    ;;
esac
if ((rc != 0)); then
  log "$SUBCMD failed (exit $rc)"
  exit "$rc"
fi
log "$SUBCMD: done${OUTPUT:+; submission $OUTPUT}"
