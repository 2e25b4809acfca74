#!/usr/bin/env bash
# Creates (or reuses) a Python venv installed only from lock files, and prints its path.
#
#   scripts/locked-venv.sh VENV LOCK [nodeps:LOCK]...
#
# Every lock pins each package with `==` and its hashes (scripts/lock-python.sh writes them), and
# pip installs with --require-hashes, so a fresh machine gets exactly the packages CI tested. A lock
# prefixed `nodeps:` holds command-line tools installed with --no-deps beside the venv's
# site-packages (in VENV/nodeps, their commands linked into VENV/bin), so that `pip check` on the
# venv stays clean about the dependencies they leave out on purpose. The stamp is the locks' hash: a changed lock
# rebuilds the venv from scratch, so a venv never keeps packages that its lock no longer names.
# pip's download cache lives under LSTM_FORECAST_CACHE, so an empty cache really is empty; wheels
# that fetch-libtorch.sh already downloaded are reused (--find-links).
set -euo pipefail
VENV="${1:?usage: locked-venv.sh VENV LOCK [nodeps:LOCK]...}"; shift
CACHE="${LSTM_FORECAST_CACHE:-$HOME/.cache/lstm-forecast}"
files=()
for lock in "$@"; do files+=("${lock#nodeps:}"); done
STAMP="$VENV/.installed-$(cat "${files[@]}" | sha256sum | cut -c1-16)"
if [ -f "$STAMP" ]; then
  echo "$VENV"
  exit 0
fi
echo "locked-venv: installing ${files[*]} into $VENV" >&2
export PIP_CACHE_DIR="$CACHE/pip"
mkdir -p "$CACHE/wheels"
rm -rf "$VENV"
"${PYTHON:-python3}" -m venv "$VENV"
pip_install() { "$VENV/bin/pip" install -q --disable-pip-version-check --require-hashes \
  --only-binary=:all: --find-links "$CACHE/wheels" "$@" >&2; }
for lock in "$@"; do
  if [[ "$lock" == nodeps:* ]]; then
    pip_install --no-deps --target "$VENV/nodeps" -r "${lock#nodeps:}"
    for tool in "$VENV"/nodeps/bin/*; do ln -sfn "$tool" "$VENV/bin/$(basename "$tool")"; done
  else
    pip_install -r "$lock"
  fi
done
"$VENV/bin/pip" check >&2
touch "$STAMP"
echo "$VENV"
