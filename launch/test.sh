#!/usr/bin/env bash
# Run the test suite (set-up included). Extra arguments go to pytest, e.g.
#   launch/test.sh -m "not slow"      # skip the slow integration tests
#   launch/test.sh tests/test_codec.py -x
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$ROOT"
exec python -m pytest "$@"
