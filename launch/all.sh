#!/usr/bin/env bash
# The main job on one node (set-up included): `acerl run`, which starts the judge, the generators
# and the learner, each a process of its own, supervised; with no arguments it trains the tiny
# default. See `acerl run --help`:
#   launch/all.sh [--recipe PATH] [--run-dir DIR] [--generators N] [--max-steps N] [--dry-run] [key=value ...]
#   launch/all.sh --resume DIR
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$ROOT"
exec acerl run "$@"
