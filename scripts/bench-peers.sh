#!/usr/bin/env bash
# Installs the peer stacks (FastAPI + TorchScript, FastAPI + ONNX Runtime) into a venv of their own
# from the hash-checked lock bench/peers/requirements.txt and runs benches/peers.rs. The ONNX peer
# serves the bundled model.onnx, the file this server's ONNX Runtime engine runs. Needs the full
# PyTorch (~4.7 GB, cached).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${LSTM_FORECAST_CACHE:-$HOME/.cache/lstm-forecast}"
VENV="$("$HERE/scripts/locked-venv.sh" "$CACHE/peers-venv" "$HERE/bench/peers/requirements.txt")"
ONNX_MODEL="$HERE/model_artifacts/etth1-ot-lstm/model.onnx"
cd "$HERE"
PEERS_PYTHON="$VENV/bin/python" ONNX_MODEL="$ONNX_MODEL" cargo bench --locked --bench peers
