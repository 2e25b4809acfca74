#!/usr/bin/env bash
# Assembles the container image's filesystem: exactly what the Dockerfile's final stage copies.
#
#   scripts/build-image-rootfs.sh OUT_DIR
#
# Layout (relative to OUT_DIR, copied to / in the image):
#   opt/lstm-forecast/bin/lstm-forecast   the release binary, stripped, rpath $ORIGIN/../lib only
#   opt/lstm-forecast/bin/bootstrap       -> lstm-forecast (Lambda's provided.al2023 entry name)
#   opt/lstm-forecast/lib/                the libtorch libraries the binary loads, stripped, and
#                                         libonnxruntime.so, which it opens at run time (dlopen)
#
# Only what the dynamic loader will open goes in: the binary's DT_NEEDED closure, read from the
# ELF files with readelf, restricted to libtorch's lib/ (the rest -- glibc, libstdc++, libgcc_s --
# comes from the base image). libtorch.so and libshm.so are in no binary's closure today, so they
# stay out; if a build starts linking them, they come in by themselves. libcudart and libcupti
# are in it (libtorch_cpu.so names them) although a CPU forward never calls CUDA: the loader
# refuses to start without them. Symbols and debug info (line tables; Cargo.toml keeps them for
# local profiling) go too: nothing reads them at run time, and they were ~280 MB of the ~630 MB.
# BENCHMARKS.md "Image" has the sizes and the bytes a cold start touches.
#
# The Dockerfile's builder stage runs this same script, and tests/it/infra.rs runs the result
# with an empty environment, so the image cannot silently depend on the build machine.
set -euo pipefail
OUT="${1:?usage: build-image-rootfs.sh OUT_DIR}"
HERE="$(cd "$(dirname "$0")/.." && pwd)"
BINARY="${BINARY:-$HERE/target/release/lstm-forecast}"
LIBTORCH="${LIBTORCH:-$("$HERE/scripts/fetch-libtorch.sh")}"
ONNXRUNTIME="${ONNXRUNTIME:-$("$HERE/scripts/fetch-onnxruntime.sh")}"
[ -x "$BINARY" ] || { echo "build-image-rootfs: $BINARY is missing; run cargo build --release first" >&2; exit 1; }
rm -rf "$OUT"
mkdir -p "$OUT/opt/lstm-forecast/bin" "$OUT/opt/lstm-forecast/lib"

needed() { readelf -d "$1" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'; }

strip --strip-all -o "$OUT/opt/lstm-forecast/bin/lstm-forecast" "$BINARY"
# The build machine's libtorch path must not leak into the image: keep only the relative rpath.
patchelf --set-rpath '$ORIGIN/../lib' "$OUT/opt/lstm-forecast/bin/lstm-forecast"
ln -s lstm-forecast "$OUT/opt/lstm-forecast/bin/bootstrap"

# Breadth-first over DT_NEEDED, from the binary through every libtorch library it pulls in.
queue=("$BINARY")
while [ "${#queue[@]}" -gt 0 ]; do
  elf="${queue[0]}"
  queue=("${queue[@]:1}")
  for name in $(needed "$elf"); do
    [ -e "$LIBTORCH/lib/$name" ] || continue
    [ -e "$OUT/opt/lstm-forecast/lib/$name" ] && continue
    strip --strip-unneeded -o "$OUT/opt/lstm-forecast/lib/$name" "$LIBTORCH/lib/$name"
    chmod 0644 "$OUT/opt/lstm-forecast/lib/$name"
    queue+=("$LIBTORCH/lib/$name")
  done
done
# Not in any DT_NEEDED list: the ONNX Runtime engine opens it by name, through the same rpath.
strip --strip-unneeded -o "$OUT/opt/lstm-forecast/lib/libonnxruntime.so" "$ONNXRUNTIME/lib/libonnxruntime.so"
chmod 0644 "$OUT/opt/lstm-forecast/lib/libonnxruntime.so"
echo "build-image-rootfs: $(du -sh "$OUT" | cut -f1) in $OUT ($(ls "$OUT/opt/lstm-forecast/lib" | tr '\n' ' '))" >&2
