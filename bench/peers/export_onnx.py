"""Exports the bundled model to ONNX (dynamic batch) for the ONNX Runtime peer.

The TorchScript file holds the weights; they are loaded into the training script's eager module,
which the ONNX exporter handles best, and the export is checked against TorchScript. The file is
frozen (no state dict), so the weights are read from its constants, in the order its code uses
them: the LSTM's flat weights, then the head's and the highway's linear layers. A wrong mapping
fails the final comparison.
"""
import re
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "../../model_artifacts/train"))
from train import LstmForecaster  # noqa: E402

out = sys.argv[1]
model_dir = os.path.join(HERE, "../../model_artifacts/etth1-ot-lstm")
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
torch.onnx.export(eager, (example,), out, input_names=["x"], output_names=["y"],
                  dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}}, opset_version=17, dynamo=False)
import onnxruntime as ort  # noqa: E402

session = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
x = torch.randn(7, window, 1)
with torch.no_grad():
    expected = scripted(x).numpy()
(got,) = session.run(None, {"x": x.numpy()})
np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
print(f"exported {out}; matches TorchScript on a batch of 7")
