"""Exports a model directory's model.pt to model.onnx (dynamic batch) and declares it in model.json.

    python export_onnx.py MODEL_DIR

The server runs its forwards on ONNX Runtime from model.onnx (src/model/onnx.rs) and checks,
at every load, that it forecasts what model.pt forecasts; this script checks the same before it
writes anything, on a batch of 7 and on one window.

The TorchScript file holds the weights; they are loaded into the training script's eager module,
which the ONNX exporter handles best. The file is frozen (no state dict), so the weights are read
from its constants, in the order its code uses them: the LSTM's flat weights, then the head's and
the highway's linear layers. A wrong mapping fails the comparison.

Needs torch, onnx and onnxruntime (the bench/peers lock has all three; `make model` uses it).
"""
import hashlib
import json
import os
import re
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from train import LstmForecaster  # noqa: E402

model_dir = sys.argv[1]
out = os.path.join(model_dir, "model.onnx")
scripted = torch.jit.load(os.path.join(model_dir, "model.pt"))
code, constants = scripted.code_with_constants
tensors = constants.const_mapping
flat = re.search(r"self_lstm__flat_weights = \[([^\]]*)\]", code).group(1)
flat = [tensors[name.strip().removeprefix("CONSTANTS.")] for name in flat.split(",")]
linears = re.findall(r"torch\.linear\([^,]+(?:\([^)]*\))?, CONSTANTS\.(c\d+), CONSTANTS\.(c\d+)\)", code)
(head_w, head_b), (highway_w, highway_b) = [(tensors[w], tensors[b]) for w, b in linears]
state = {"head.weight": head_w, "head.bias": head_b,
         "highway.weight": highway_w, "highway.bias": highway_b}
for i in range(len(flat) // 4):
    for j, kind in enumerate(["weight_ih", "weight_hh", "bias_ih", "bias_hh"]):
        state[f"lstm.{kind}_l{i}"] = flat[4 * i + j]
hidden = state["lstm.weight_hh_l0"].shape[1]
layers = sum(1 for k in state if k.startswith("lstm.weight_ih_l"))
window = state["highway.weight"].shape[1]
horizon = state["head.weight"].shape[0]
eager = LstmForecaster(1, hidden, layers, window, horizon, 0)
eager.load_state_dict(state)
eager.eval()
example = torch.randn(4, window, 1)
partial = out + ".partial"
torch.onnx.export(eager, (example,), partial, input_names=["x"], output_names=["y"],
                  dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
import onnxruntime as ort  # noqa: E402

session = ort.InferenceSession(partial, providers=["CPUExecutionProvider"])
for batch in (7, 1):
    x = torch.randn(batch, window, 1)
    with torch.no_grad():
        expected = scripted(x).numpy()
    (got,) = session.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
os.replace(partial, out)
with open(out, "rb") as f:
    digest = hashlib.sha256(f.read()).hexdigest()
meta_path = os.path.join(model_dir, "model.json")
with open(meta_path) as f:
    meta = json.load(f)
# Right after model_sha256, where a reader looks for it.
meta = {k: v for pair in ((k, v) for k, v in meta.items() if k != "onnx_sha256")
        for k, v in ([pair, ("onnx_sha256", digest)] if pair[0] == "model_sha256" else [pair])}
with open(meta_path, "w") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
print(f"exported {out} (sha256 {digest}); matches TorchScript on batches of 7 and 1", file=sys.stderr)
