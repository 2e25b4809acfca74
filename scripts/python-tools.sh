#!/usr/bin/env bash
# Installs the Python-packaged tools the tests use (moto, ministack, cfn-lint with the SAM translator,
# cargo-lambda, kubernetes-validate) into a cached venv, from the locks beside this script, and
# prints the venv's path. See locked-venv.sh; regenerate the locks with lock-python.sh.
#
# cargo-lambda is installed with --no-deps: its one dependency, ziglang (411 MB), is only for
# `cargo lambda build`; the tests use its Lambda Runtime API emulator (`cargo lambda watch`).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
CACHE="${LSTM_FORECAST_CACHE:-$HOME/.cache/lstm-forecast}"
exec "$HERE/locked-venv.sh" "$CACHE/tools-venv" \
  "$HERE/requirements-tools.txt" "nodeps:$HERE/requirements-cargo-lambda.txt"
