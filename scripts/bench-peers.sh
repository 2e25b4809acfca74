#!/usr/bin/env bash
# Installs the peer stacks (FastAPI + TorchScript, FastAPI + ONNX Runtime) into a venv of their own
# from the hash-checked lock bench/peers/requirements.txt, exports the ONNX model, and runs
# benches/peers.rs. Needs the full PyTorch (~4.7 GB, cached).
set -euo pipefail
HERE="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${LSTM_FORECAST_CACHE:-$HOME/.cache/lstm-forecast}"
VENV="$("$HERE/scripts/locked-venv.sh" "$CACHE/peers-venv" "$HERE/bench/peers/requirements.txt")"
ONNX_MODEL="$CACHE/etth1-ot-lstm.onnx"
"$VENV/bin/python" "$HERE/bench/peers/export_onnx.py" "$ONNX_MODEL" 2>/dev/null
cd "$HERE"
PEERS_PYTHON="$VENV/bin/python" ONNX_MODEL="$ONNX_MODEL" cargo bench --locked --bench peers
