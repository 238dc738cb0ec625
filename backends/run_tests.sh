#!/usr/bin/env bash
# Run the test suite against one backend: bash backends/run_tests.sh torch [pytest args...]
# Tests that take the `backend` fixture, or list backends themselves, run only on that backend; backend-free tests
# run too.
set -euo pipefail
if [ $# -lt 1 ]; then
  echo "usage: $0 numpy|array_api_strict|torch|jax|cupy|generic [pytest args...]" >&2
  exit 2
fi
name=$1
shift
# "generic" is array_api_strict through the generic adapter (the fixture's generic-array_api_strict case)
case "$name" in
  numpy|array_api_strict|torch|jax|cupy) spec=$name ;;
  generic) spec=generic:array_api_strict ;;
  *) echo "unknown backend '$name'; valid: numpy array_api_strict torch jax cupy generic" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
python -c "import sys, nnx.backends as b; ok, why = b.backend_status('$spec'); print('$spec:', why); sys.exit(0 if ok else 3)"
NNX_TEST_BACKEND="$name" exec python -m pytest "$@"
