#!/usr/bin/env bash
# Takes ONNX Runtime's C library (libonnxruntime.so, CPU) out of the PyPI onnxruntime wheel, for the
# ONNX Runtime engine (src/model/onnx.rs), which opens it at run time.
#
# Why the wheel: only package registries are reachable from where this project is built, and the
# wheel carries the same C library as Microsoft's release archives (the Python module is a thin
# binding over it). The pin and its hashes: scripts/requirements-onnxruntime.txt.
#
# Idempotent; cached outside the clone so fresh clones and CI runs reuse it.
# Prints the folder (lib/libonnxruntime.so inside) on stdout; everything else goes to stderr.
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
LOCK="$HERE/scripts/requirements-onnxruntime.txt"
VERSION="$(sed -n 's/^onnxruntime==\([0-9.]*\) .*/\1/p' "$LOCK")"
CACHE="${LSTM_FORECAST_CACHE:-$HOME/.cache/lstm-forecast}"
DEST="$CACHE/onnxruntime-$VERSION"
WHEELS="$CACHE/wheels"
log() { echo "fetch-onnxruntime: $*" >&2; }

if [ -f "$DEST/.complete" ]; then
  echo "$DEST"
  exit 0
fi

PYTHON="${PYTHON:-python3}"
export PIP_CACHE_DIR="$CACHE/pip"
mkdir -p "$WHEELS"
if ! ls "$WHEELS"/onnxruntime-"$VERSION"-*.whl >/dev/null 2>&1; then
  log "downloading the onnxruntime==$VERSION wheel (~17 MB), hash-checked (once)"
  # Explicit platform tags so the download does not depend on the local Python version.
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --require-hashes --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" -r "$LOCK" >&2
fi

STAGE="$DEST.partial"
rm -rf "$STAGE"
mkdir -p "$STAGE/lib"
"$PYTHON" - "$WHEELS" "$VERSION" "$STAGE/lib" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, version, lib = sys.argv[1:]
wheel = sorted(glob.glob(os.path.join(wheels, f"onnxruntime-{version}-*.whl")))[0]
with zipfile.ZipFile(wheel) as zf:
    names = [n for n in zf.namelist()
             if n.startswith("onnxruntime/capi/libonnxruntime.so")]
    if not names:
        sys.exit(f"fetch-onnxruntime: no libonnxruntime.so in {wheel}")
    with zf.open(names[0]) as src, open(os.path.join(lib, "libonnxruntime.so"), "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
PY
rm -rf "$DEST"
mv "$STAGE" "$DEST"
touch "$DEST/.complete"
log "ONNX Runtime $VERSION ready at $DEST ($(du -sh "$DEST" | cut -f1))"
echo "$DEST"
