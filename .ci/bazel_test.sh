#!/usr/bin/env bash
# CI: `bazel test` the py_test targets in tests/BUILD (after the pytest run in .ci/run).
#
#   .ci/bazel_test.sh                  --config=fast //tests:ci: a few quick files (pytest
#                                      has already run every test in CI)
#   .ci/bazel_test.sh --config=fast //tests/...   every test file, slow tests left out
#   .ci/bazel_test.sh //tests/...      everything (extra arguments go to `bazel test`)
#
# Uses Debian's bazel-bootstrap (Bazel 4.2.3), installed with apt if no `bazel` is on
# PATH; it needs no network (see WORKSPACE). Needs the requirements.txt environment.
# See docs/bazel.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export TFDS_DATA_DIR="${TFDS_DATA_DIR:-$(cd .. && pwd)/shared/tfds}"

if ! command -v bazel >/dev/null; then
  echo "bazel_test: installing bazel-bootstrap with apt" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends bazel-bootstrap >/dev/null
fi

# The py_test launcher (#!/usr/bin/env python) needs a `python`; Bazel's Python
# toolchain then runs `python3` from PATH, the one requirements.txt installed into.
if ! command -v python >/dev/null; then
  shim="${XDG_CACHE_HOME:-$HOME/.cache}/tf_srkd-bazel/bin"
  mkdir -p "$shim"
  ln -sf "$(command -v python3)" "$shim/python"
  export PATH="$shim:$PATH"
fi

trap 'bazel shutdown' EXIT
if [ $# -eq 0 ]; then
  set -- --config=fast //tests:ci
fi
start=$(date +%s)
status=0
# --nocache_test_results: the installed packages and the data are not Bazel inputs, so a
# cached result could be stale.
bazel test --nocache_test_results "$@" || status=$?
echo "bazel_test: bazel test $* -> exit $status in $(( $(date +%s) - start ))s wall"
exit "$status"
