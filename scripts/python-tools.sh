#!/usr/bin/env bash
# Installs the Python-packaged tools the tests use into a cached venv and prints its path.
#
# cargo-lambda comes from PyPI with --no-deps: its `ziglang` dependency (411 MB) is only needed for
# `cargo lambda build`, and the tests only use its Lambda Runtime API emulator (`cargo lambda watch`).
set -euo pipefail
CACHE="${LSTM_FORECAST_CACHE:-$HOME/.cache/lstm-forecast}"
VENV="$CACHE/tools-venv"
HERE="$(cd "$(dirname "$0")" && pwd)"
CARGO_LAMBDA_VERSION=1.9.2
STAMP="$VENV/.installed-$(cat "$HERE/requirements-tools.txt" | sha256sum | cut -c1-16)-cl$CARGO_LAMBDA_VERSION"
if [ -f "$STAMP" ]; then
  echo "$VENV"
  exit 0
fi
echo "python-tools: installing moto, cfn-lint, cargo-lambda into $VENV" >&2
"${PYTHON:-python3}" -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check -r "$HERE/requirements-tools.txt" >&2
"$VENV/bin/pip" install -q --disable-pip-version-check --no-deps "cargo-lambda==$CARGO_LAMBDA_VERSION" >&2
"$VENV/bin/cargo-lambda" lambda --version >&2
rm -f "$VENV"/.installed-*
touch "$STAMP"
echo "$VENV"
