#!/usr/bin/env bash
# One more generator for a running training, on this machine or another (set-up included):
#   launch/generator.sh learner=tcp://LEARNER_HOST:5555 judge=tcp://JUDGE_HOST:5556 model=DIR
# `acerl generator --help` lists every field; see docs/generator.md.
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$ROOT"
exec acerl generator "$@"
