"""Writes the test fixture models under tests/fixtures/.

broken-traced-lstm/: an LSTM exported with torch.jit.trace at batch size 1, with its initial
hidden state passed as constants. The trace bakes that batch size in; libtorch's oneDNN LSTM then
crashes the process (SIGSEGV, no exception) on any other batch size. This is the model that
`lstm-forecast model validate` must reject without dying itself.

quantile-lstm/ and quantile-lstm-crossing/: untrained networks that return quantiles
([batch, 24, 3] for output.quantiles [0.1, 0.5, 0.9]). The first builds its outer quantiles as
the median minus and plus a softplus, so they never cross; the second has three free heads, whose
quantiles cross, which `model validate` must refuse (the service sorts them anyway).

Usage: python make_fixtures.py --out ../../tests/fixtures
"""
import argparse
import datetime as dt
import hashlib
import json
import os

import torch
from torch import nn

WINDOW, HORIZON, HIDDEN = 168, 24, 8


class FixedBatchLstm(nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(1, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, HORIZON)
        # The mistake: a hidden state sized for batch 1, captured as a constant by the trace.
        self.register_buffer("h0", torch.zeros(1, 1, HIDDEN))
        self.register_buffer("c0", torch.zeros(1, 1, HIDDEN))

    def forward(self, x):
        out, _ = self.lstm(x, (self.h0, self.c0))
        return self.head(out[:, -1, :])


class QuantileLstm(nn.Module):
    def __init__(self, ordered):
        super().__init__()
        self.ordered = ordered
        self.horizon = HORIZON
        self.lstm = nn.LSTM(1, HIDDEN, batch_first=True)
        self.head = nn.Linear(HIDDEN, HORIZON * 3)

    def forward(self, x):
        out, _ = self.lstm(x)
        raw = self.head(out[:, -1, :]).view(-1, self.horizon, 3)
        if not self.ordered:
            return raw
        median = raw[:, :, 1:2]
        below = median - nn.functional.softplus(raw[:, :, 0:1])
        above = median + nn.functional.softplus(raw[:, :, 2:3])
        return torch.cat([below, median, above], dim=2)


def write(folder, module, name, output, note):
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, "model.pt")
    module.save(path)
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    meta = {
        "format_version": 1,
        "name": name,
        "version": "0.0.1",
        "created_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "torch_version": torch.__version__.split("+")[0],
        "model_sha256": digest,
        "input": {"window": WINDOW, "features": ["OT"], "target": "OT", "frequency": "1h"},
        "output": output,
        "preprocessing": [{"kind": "z_score", "mean": [17.0], "std": [9.0]}],
        "training_stats": {"OT": {"mean": 17.0, "std": 9.0, "min": -4.0, "max": 46.0, "quantile_edges": [-4.0, 17.0, 46.0]}},
        "training": {"note": note},
    }
    with open(os.path.join(folder, "model.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")
    print(f"wrote {folder}")


def quantile_fixtures(out):
    for folder, ordered in [("quantile-lstm", True), ("quantile-lstm-crossing", False)]:
        torch.manual_seed(1)
        module = torch.jit.script(QuantileLstm(ordered).eval())
        note = "untrained; quantiles ordered by construction" if ordered else "untrained; free quantile heads that cross"
        write(os.path.join(out, folder), module, folder, {"horizon": HORIZON, "quantiles": [0.1, 0.5, 0.9]}, note)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.manual_seed(0)
    model = FixedBatchLstm().eval()
    traced = torch.jit.trace(model, torch.zeros(1, WINDOW, 1))
    write(os.path.join(args.out, "broken-traced-lstm"), traced, "broken-traced-lstm", {"horizon": HORIZON},
          "untrained; traced with a fixed batch of 1 on purpose (see make_fixtures.py)")
    quantile_fixtures(args.out)


if __name__ == "__main__":
    main()
