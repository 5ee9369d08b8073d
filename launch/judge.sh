#!/usr/bin/env bash
# The judge alone, as a verification service (set-up included): `acerl judge serve`, e.g.
#   launch/judge.sh bind=tcp://127.0.0.1:5556 workers=8
#   launch/judge.sh bind=tcp://0.0.0.0:5556 curve_secret=keys/judge.key_secret curve_clients=keys/clients
set -euo pipefail
source "$(dirname "$0")/setup.sh"
cd "$ROOT"
exec acerl judge serve "$@"
