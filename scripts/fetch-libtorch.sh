#!/usr/bin/env bash
# Builds a CPU-only libtorch folder for tch 0.26 out of the PyPI torch 2.13.0 wheel.
#
# Why not the official libtorch zip: only package registries are reachable from where this project
# is built. The PyPI wheel is a CUDA build, so we keep only the CPU libraries, drop libtorch.so's
# NEEDED entry on libtorch_cuda.so, and ship the two tiny CUDA runtime libs libtorch_cpu.so links
# against (CPU inference never initialises CUDA).
#
# Idempotent; cached outside the clone so fresh clones and CI runs reuse it.
# Prints the libtorch folder on stdout (everything else goes to stderr).
set -euo pipefail

TORCH_VERSION=2.13.0
CACHE="${LSTM_FORECAST_CACHE:-$HOME/.cache/lstm-forecast}"
DEST="$CACHE/libtorch-$TORCH_VERSION-cpu"
WHEELS="$CACHE/wheels"
log() { echo "fetch-libtorch: $*" >&2; }

if [ -f "$DEST/.complete" ]; then
  echo "$DEST"
  exit 0
fi

if ! command -v patchelf >/dev/null 2>&1; then
  log "installing patchelf (Debian package)"
  if [ "$(id -u)" = 0 ]; then
    (apt-get install -y -q patchelf >&2 || { apt-get update -q >&2 && apt-get install -y -q patchelf >&2; })
  else
    log "patchelf is missing; install it (e.g. 'sudo apt-get install patchelf') and re-run"; exit 1
  fi
fi

PYTHON="${PYTHON:-python3}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
export PIP_CACHE_DIR="$CACHE/pip"
mkdir -p "$WHEELS"
# The three wheels, with the hashes the training lock pins for them (pip checks every download).
LOCKED="$CACHE/libtorch-wheels.txt"
"$PYTHON" - "$HERE/model_artifacts/train/requirements.txt" "$LOCKED" <<'PY'
import re, sys
lock, out = sys.argv[1], sys.argv[2]
wanted = {"torch", "nvidia-cuda-runtime", "nvidia-cuda-cupti"}
blocks = re.split(r"\n(?=\S)", open(lock).read())
picked = [b.split("    # via")[0].rstrip() for b in blocks if b.split("==")[0].strip() in wanted]
if len(picked) != len(wanted):
    sys.exit(f"fetch-libtorch: {lock} must pin {sorted(wanted)} with hashes")
open(out, "w").write("\n".join(picked) + "\n")
PY
if ! grep -q "^torch==$TORCH_VERSION " "$LOCKED"; then
  log "model_artifacts/train/requirements.txt pins another torch than $TORCH_VERSION (tch 0.26 needs it)"; exit 1
fi
if ! ls "$WHEELS"/torch-$TORCH_VERSION-*.whl "$WHEELS"/nvidia_cuda_runtime-*.whl \
    "$WHEELS"/nvidia_cuda_cupti-*.whl >/dev/null 2>&1; then
  log "downloading the torch==$TORCH_VERSION wheel (~526 MB) and two CUDA runtime wheels, hash-checked (once)"
  # Explicit platform tags so the download does not depend on the local Python version.
  "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --require-hashes --python-version 3.11 \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_25_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$WHEELS" -r "$LOCKED" >&2
fi

STAGE="$DEST.partial"
rm -rf "$STAGE"
mkdir -p "$STAGE/lib"
log "extracting CPU libraries and headers"
"$PYTHON" - "$WHEELS" "$STAGE" <<'PY'
import glob, os, shutil, sys, zipfile
wheels, stage = sys.argv[1], sys.argv[2]
keep_libs = ("libtorch_cpu.so", "libtorch.so", "libc10.so", "libshm.so")
def extract(zf, member, target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with zf.open(member) as src, open(target, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
torch_whl = sorted(glob.glob(os.path.join(wheels, "torch-*.whl")))[0]
with zipfile.ZipFile(torch_whl) as zf:
    for name in zf.namelist():
        base = os.path.basename(name)
        if name.startswith("torch/include/") and not name.endswith("/"):
            extract(zf, name, os.path.join(stage, "include", name[len("torch/include/"):]))
        elif name.startswith("torch/lib/") and (base in keep_libs or base.startswith("libgomp")):
            extract(zf, name, os.path.join(stage, "lib", base))
for pattern in ("nvidia_cuda_runtime-*.whl", "nvidia_cuda_cupti-*.whl"):
    whl = sorted(glob.glob(os.path.join(wheels, pattern)))[0]
    with zipfile.ZipFile(whl) as zf:
        for name in zf.namelist():
            base = os.path.basename(name)
            if "/lib/" in name and (base.startswith("libcudart.so") or base.startswith("libcupti.so")):
                extract(zf, name, os.path.join(stage, "lib", base))
PY
patchelf --remove-needed libtorch_cuda.so "$STAGE/lib/libtorch.so"
if patchelf --print-needed "$STAGE/lib/libtorch.so" | grep -q libtorch_cuda; then
  log "patchelf did not remove libtorch_cuda.so"; exit 1
fi
# tch's build script reads the version from this file to check compatibility.
echo "$TORCH_VERSION" > "$STAGE/build-version"
rm -rf "$DEST"
mv "$STAGE" "$DEST"
touch "$DEST/.complete"
log "libtorch ready at $DEST ($(du -sh "$DEST" | cut -f1))"
echo "$DEST"
