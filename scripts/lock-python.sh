#!/usr/bin/env bash
# Regenerates every Python lock from the requirements.in beside it: each package pinned with `==`
# and its hashes, for Linux x86_64 and CPython 3.11 (the machines `make` supports). The installers
# (python-tools.sh, bench-peers.sh, `make model`) use only the locks, with --require-hashes, and
# rebuild their venv whenever a lock changes.
#
#   scripts/lock-python.sh            re-resolve from the .in files (keeps versions already locked)
#   scripts/lock-python.sh --upgrade  take the newest versions the .in files allow
#
# Uses uv (from PyPI, installed into a throw-away venv) because it reads hashes from the index
# without downloading the 4.7 GB of CUDA wheels that torch's lock names.
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
UV_VERSION=0.13.9
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"${PYTHON:-python3}" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --disable-pip-version-check "uv==$UV_VERSION"
lock() { # lock IN OUT [extra uv args]
  local in="$1" out="$2"; shift 2
  (cd "$(dirname "$HERE/$in")" && "$tmp/venv/bin/uv" pip compile "$(basename "$in")" \
      --quiet --generate-hashes --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
      --custom-compile-command "scripts/lock-python.sh" -o "$HERE/$out" "$@")
  echo "locked $out ($(grep -c '^[A-Za-z0-9].*==' "$HERE/$out") packages)"
}
lock scripts/requirements-tools.in scripts/requirements-tools.txt "${@}"
# pip's --require-hashes matches a dependency's `pydantic[email]` (sigstore-rekor-types, under
# model-signing) only to a pin that names the extra too; uv writes the pin without it.
sed -i 's/^pydantic==/pydantic[email]==/' "$HERE/scripts/requirements-tools.txt"
lock scripts/requirements-cargo-lambda.in scripts/requirements-cargo-lambda.txt --no-deps "${@}"
lock model_artifacts/train/requirements.in model_artifacts/train/requirements.txt "${@}"
lock bench/peers/requirements.in bench/peers/requirements.txt "${@}"
