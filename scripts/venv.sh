#!/usr/bin/env sh
# Makes .venv hold the pinned set of one requirements file, building or
# rebuilding it when needed. Called by the Makefile before every command:
#
#   scripts/venv.sh requirements.txt        # runtime set (make demo)
#   scripts/venv.sh requirements-dev.txt    # runtime + tests + lint + libtpu (make test)
#
# The interpreter is $PYTHON when set, else the first supported one on PATH.
# A .venv made by another Python version, one whose interpreter is gone, or one
# left half-built by an interrupted install is removed and built again.
set -eu

# Versions for which every pinned wheel exists (tensorflow-cpu 2.20, scann 1.4.2,
# jaxlib 0.10.2 and libtpu: cp311-cp313; 3.14 lacks tensorflow-cpu and scann).
SUPPORTED="3.11 3.12 3.13"
VENV=.venv
REQ=${1:?usage: scripts/venv.sh REQUIREMENTS_FILE}

version_of() { # "3.11" for an interpreter, empty when it does not run
    "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true
}

supported() {
    for v in $SUPPORTED; do [ "$1" = "$v" ] && return 0; done
    return 1
}

if [ -n "${PYTHON:-}" ]; then
    if ! command -v "$PYTHON" >/dev/null 2>&1; then
        echo "error: PYTHON=$PYTHON: no such interpreter on PATH" >&2
        exit 2
    fi
    want=$(version_of "$PYTHON")
    if ! supported "$want"; then
        echo "error: PYTHON=$PYTHON is Python ${want:-?}; gld-jax's pinned set needs one of: $SUPPORTED" >&2
        exit 2
    fi
else
    PYTHON=
    for candidate in python3.11 python3.12 python3.13 python3; do
        command -v "$candidate" >/dev/null 2>&1 || continue
        v=$(version_of "$candidate")
        if supported "$v"; then
            PYTHON=$candidate
            want=$v
            break
        fi
    done
    if [ -z "$PYTHON" ]; then
        echo "error: no supported Python found (need one of: $SUPPORTED); install one or pass make PYTHON=/path/to/python3.X" >&2
        exit 2
    fi
fi

if [ -e "$VENV" ]; then
    have=$(version_of "$VENV/bin/python")
    reason=
    if [ -e "$VENV/.incomplete" ]; then
        reason="an install into it was interrupted"
    elif [ -z "$have" ]; then
        reason="its interpreter does not run"
    elif [ "$have" != "$want" ]; then
        reason="it was built by Python $have, this build uses $PYTHON (Python $want)"
    fi
    if [ -n "$reason" ]; then
        echo "rebuilding $VENV: $reason"
        rm -rf "$VENV"
    fi
fi

# The requirement files this one pulls in (-r lines), so a change in any of them
# reinstalls; their combined hash is the stamp.
files=$REQ
todo=$REQ
while [ -n "$todo" ]; do
    next=
    for f in $todo; do
        for inc in $(sed -n 's/^-r[[:space:]]*//p' "$f"); do
            inc="$(dirname "$f")/$inc"
            files="$files $inc"
            next="$next $inc"
        done
    done
    todo=$next
done
stamp="$VENV/.stamp-$(basename "$REQ")"
# shellcheck disable=SC2086  # $files is a list of paths without spaces
digest=$(cat $files | cksum)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$digest" ]; then
    exit 0
fi

if [ ! -e "$VENV/bin/python" ]; then
    echo "creating $VENV with $PYTHON (Python $want)"
    mkdir -p "$VENV"
    touch "$VENV/.incomplete"
    "$PYTHON" -m venv "$VENV"
fi
touch "$VENV/.incomplete"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -r "$REQ"
echo "$digest" >"$stamp"
rm -f "$VENV/.incomplete"
