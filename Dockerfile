# One image for Lambda (default command) and ECS/Kubernetes (`serve`).
#
#   docker build -t lstm-forecast .
#   docker run -p 8080:8080 lstm-forecast serve --bind 0.0.0.0:8080
#
# Size: ~490 MB (Debian slim ~75 MB + 414 MB of our own files: the libtorch libraries the binary
# loads, stripped, 356 MB, of which libtorch_cpu.so is 349 MB; libonnxruntime.so, 35 MB, for lone
# windows; the stripped binary, 23 MB). Before
# scripts/build-image-rootfs.sh followed DT_NEEDED and stripped, our files were 663 MB. A cold
# start maps ~18 MB of them (BENCHMARKS.md "Image"). libtorch_cpu.so alone is why the Lambda is an
# image and not a zip (250 MB limit).
#
# SnapStart: AWS requires a container image either to call the Runtime API's /restore/next or to
# carry LABEL com.amazonaws.lambda.feature.snapstart="Allow" (publishing a version fails with
# neither; AWS Lambda docs, "Implementing SnapStart hooks for container images"). The label is the
# way for runtimes that do not implement the hooks. This image takes the other way, so it has no
# label: lambda_runtime (1.5) calls /restore/next itself, running the registered
# before_snapshot/after_restore hooks around it, whenever AWS_LAMBDA_INITIALIZATION_TYPE=snap-start.

# --- builder: the same scripts as `make release` and `make image-rootfs` ---------------------------
FROM rust:1.95-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends patchelf python3 python3-pip python3-venv \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
ENV LSTM_FORECAST_CACHE=/cache
RUN ln -sfn "$(scripts/fetch-libtorch.sh)" .libtorch \
 && cargo build --release --locked --bin lstm-forecast \
 && scripts/build-image-rootfs.sh /rootfs

# --- final: minimal runtime, non-root -------------------------------------------------------------
# glibc >= 2.28 and libstdc++ are all libtorch needs; bookworm-slim has both.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin forecast
COPY --from=builder /rootfs/ /
USER 10001
ENV PATH=/opt/lstm-forecast/bin:$PATH \
    LSTM_FORECAST_MODEL_CACHE=/tmp/lstm-forecast-models
EXPOSE 8080
# Lambda runs the entrypoint with the image's CMD: `bootstrap` = `lstm-forecast lambda`.
ENTRYPOINT ["/opt/lstm-forecast/bin/lstm-forecast"]
CMD ["lambda"]
