#!/usr/bin/env bash
# Create, set up, run on, tail the logs of, and delete a Cloud TPU VM pod slice.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
usage: $PROG <create|setup|run|logs|wait|status|delete> [options] [-- COMMAND...]

  create   create the slice (tpu-vm create, or a queued resource with --queued)
           and wait until it is READY; a preempted or failed one is recreated
  setup    copy this checkout (or clone --repo_url) to every worker and install
           requirements.txt with jax[tpu] into REMOTE_DIR/.venv
  run      start COMMAND on every worker (--worker=all, GLD_JAX_DISTRIBUTED=1),
           detached, in REMOTE_DIR with the venv on PATH, and wait for its exit
           status; the log is REMOTE_DIR/logs/JOB.log on each worker
  logs     tail a job's log (default: the newest log on worker 0)
  wait     wait for a running job's exit status (re-attach)
  status   print the slice's state (READY, CREATING, PREEMPTED, ... or ABSENT)
  delete   delete the slice (with --queued: the queued resource and its node)

options (or the environment variables in capitals):
  --tpu_name NAME  --zone ZONE  --project PROJECT
  --accelerator_type TYPE (v3-32, v4-32, ...)  --runtime_version VERSION
  --spot           spot capacity            --queued   use a queued resource
  --dry_run        print the commands, run none
  --repo_url URL --repo_ref REF   setup clones instead of copying this checkout
  --job NAME       job name (run, logs, wait; default "job", logs: newest)
  --worker W       all or a worker number (run: all; logs: 0)
  --detach         run: start the job and return without waiting
  --recover        run: recreate the slice and rerun if it is preempted
                   (see train.sh; --max_retries N, --retry_sleep S)
  --lines N        logs: lines to show (default 100)
  --follow         logs: keep following the log

COMMAND is one shell string ('cmd && cmd') or several words, e.g.
  $PROG run --job effb7 -- python -m gld_jax.main --config configs/effb7.py \\
      --workdir gs://BUCKET/runs/effb7_fold0 --mode train
Environment variables and defaults: see scripts/tpu/common.sh.
EOF
}

SUBCMD=""
JOB=""
WORKER=""
DETACH=0
RECOVER=0
LINES=100
FOLLOW=0
CMD_ARGS=()
while (($#)); do
  opt=$1
  [[ $opt == --* && $opt != -- ]] && opt=$(normalize_opt "$opt")
  case $opt in
    -h | --help) usage; exit 0 ;;
    --job | --job=*) take_value "$opt" "${@:2}"; JOB=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --worker | --worker=*) take_value "$opt" "${@:2}"; WORKER=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --lines | --lines=*) take_value "$opt" "${@:2}"; LINES=$OPT_VALUE; shift "$OPT_SHIFT" ;;
    --detach) DETACH=1; shift ;;
    --recover) RECOVER=1; shift ;;
    --follow) FOLLOW=1; shift ;;
    --) shift; CMD_ARGS=("$@"); break ;;
    -*)
      if parse_common_opt "$opt" "${@:2}"; then shift "$OPT_SHIFT"; else usage_error "unknown option '$1'"; fi
      ;;
    *)
      if [[ -z $SUBCMD ]]; then
        SUBCMD=$1
        shift
      elif [[ $SUBCMD == run ]]; then
        CMD_ARGS=("$@")
        break
      else
        usage_error "unexpected argument '$1'"
      fi
      ;;
  esac
done

case $SUBCMD in
  create | setup | run | logs | wait | status | delete) ;;
  "") usage_error "no sub-command: create, setup, run, logs, wait, status or delete" ;;
  *) usage_error "unknown sub-command '$SUBCMD': create, setup, run, logs, wait, status or delete" ;;
esac
[[ -z $WORKER || $WORKER == all ]] || is_uint "$WORKER" || usage_error "--worker must be 'all' or a number, got '$WORKER'"
is_uint "$LINES" || usage_error "--lines must be a number, got '$LINES'"
[[ -z $JOB ]] || check_job_name "$JOB"
if [[ $SUBCMD == run ]] && ((${#CMD_ARGS[@]} == 0)); then
  usage_error "run needs a command: $PROG run [options] -- COMMAND..."
fi
if [[ $SUBCMD == create ]] || ((RECOVER)); then check_common create; else check_common; fi
if [[ $SUBCMD == wait && -z $JOB ]]; then usage_error "wait needs --job NAME"; fi
announce_dry_run

case $SUBCMD in
  create)
    prepare_slice 0
    ;;
  setup)
    setup_slice
    ;;
  run)
    : "${JOB:=job}" "${WORKER:=all}"
    if ((${#CMD_ARGS[@]} == 1)); then cmd=${CMD_ARGS[0]}; else cmd=$(join_cmd "${CMD_ARGS[@]}"); fi
    env=""
    [[ $WORKER != all ]] || env="GLD_JAX_DISTRIBUTED=1"
    if ((DETACH)); then
      tpu_ssh "$WORKER" "$(launch_script "$JOB" "$env" "$cmd")"
      log "$JOB started; follow it with: $PROG logs --job $JOB --follow"
    elif ((RECOVER)); then
      NEED_SETUP=0
      rc=0
      run_with_recovery "$JOB" "$WORKER" "$env" "$cmd" || rc=$?
      if [[ -n $RECOVERY_STOP ]]; then log "error: $JOB: $RECOVERY_STOP"; fi
      exit "$rc"
    else
      run_job "$JOB" "$WORKER" "$env" "$cmd"
    fi
    ;;
  logs)
    # shellcheck disable=SC2016 # these run on the worker
    {
      pick='f=$(ls -t logs/*.log 2>/dev/null | head -n 1)'
      show='[ -n "$f" ] && [ -f "$f" ] || { echo "no such log on $(hostname)" >&2; exit 1; }; echo "== $(hostname): $PWD/$f"'
    }
    [[ -z $JOB ]] || pick="f=logs/$JOB.log"
    tail_cmd="tail -n $LINES"
    if ((FOLLOW)); then tail_cmd+=" -F"; fi
    tpu_ssh "${WORKER:-0}" "cd $(shquote "$REMOTE_DIR") || exit 1; $pick; $show; $tail_cmd \"\$f\""
    ;;
  wait)
    tpu_ssh "${WORKER:-all}" "$(wait_script "$JOB")"
    ;;
  status)
    state=$(slice_state)
    if is_true "$QUEUED"; then log "queued resource $QUEUED_RESOURCE_ID: $(qr_state)"; fi
    is_true "$DRY_RUN" || echo "$state"
    ;;
  delete)
    delete_slice
    ;;
esac
