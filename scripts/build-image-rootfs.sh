#!/usr/bin/env bash
# Assembles the container image's filesystem: exactly what the Dockerfile's final stage copies.
#
#   scripts/build-image-rootfs.sh OUT_DIR
#
# Layout (relative to OUT_DIR, copied to / in the image):
#   opt/lstm-forecast/bin/lstm-forecast   the release binary, rpath $ORIGIN/../lib only
#   opt/lstm-forecast/bin/bootstrap       -> lstm-forecast (Lambda's provided.al2023 entry name)
#   opt/lstm-forecast/lib/                the CPU libtorch libraries
#
# The Dockerfile's builder stage runs this same script, and tests/infra.rs runs the result
# with an empty environment, so the image cannot silently depend on the build machine.
set -euo pipefail
OUT="${1:?usage: build-image-rootfs.sh OUT_DIR}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
BINARY="${BINARY:-$HERE/target/release/lstm-forecast}"
LIBTORCH="${LIBTORCH:-$("$HERE/scripts/fetch-libtorch.sh")}"
[ -x "$BINARY" ] || { echo "build-image-rootfs: $BINARY is missing; run cargo build --release first" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT/opt/lstm-forecast/bin" "$OUT/opt/lstm-forecast/lib"
cp "$BINARY" "$OUT/opt/lstm-forecast/bin/lstm-forecast"
# The build machine's libtorch path must not leak into the image: keep only the relative rpath.
patchelf --set-rpath '$ORIGIN/../lib' "$OUT/opt/lstm-forecast/bin/lstm-forecast"
ln -s lstm-forecast "$OUT/opt/lstm-forecast/bin/bootstrap"
for lib in "$LIBTORCH"/lib/*.so*; do
  cp "$lib" "$OUT/opt/lstm-forecast/lib/"
done
echo "build-image-rootfs: $(du -sh "$OUT" | cut -f1) in $OUT" >&2
