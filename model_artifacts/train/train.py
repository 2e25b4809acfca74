"""Trains the bundled LSTM on ETTh1 (univariate OT, window 168 -> horizon 24) and exports it.

Writes, into --out:
  model.pt    TorchScript via torch.jit.script, so every batch size works (a traced LSTM with a
              fixed batch segfaults inside oneDNN on other batch sizes; see tests/fixtures),
              then frozen, which makes it load several times faster.
  model.json  the model contract the Rust service loads and checks (preprocessing, stats, scores).
and --parity: ~32 test windows with PyTorch's own forecasts on the original scale, which the Rust
service must reproduce (tests/parity.rs).

The network sees each window z-scored with train statistics and then shifted by its own last value
("subtract_last"); the same two steps are declared in model.json, applied by the service, and
inverted on the way out. Shifting by the last value matters more than the architecture on ETTh1:
"repeat the last value" already beats the published LSTMa and Informer at H=24.

Usage: python train.py --data ../data/ETTh1.csv --out ../etth1-ot-lstm --parity ../../tests/fixtures/parity-etth1-ot-lstm.json
"""
import argparse
import datetime as dt
import hashlib
import json
import os
import random
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import drift_calibration  # noqa: E402
import etth1  # noqa: E402


class LstmForecaster(nn.Module):
    """Stacked LSTM over the window; its last hidden state feeds a linear head for all horizon steps.

    A linear "highway" from the raw (normalised) target history is added to the head's output, as in
    LSTNet: the LSTM then learns the non-linear residual on top of a linear autoregression.
    """

    def __init__(self, n_features: int, hidden: int, layers: int, window: int, horizon: int, target_index: int):
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, horizon)
        self.highway = nn.Linear(window, horizon)
        self.target_index = target_index

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [batch, window, features] -> [batch, horizon]
        out, _ = self.lstm(x)
        return self.head(out[:, -1, :]) + self.highway(x[:, :, self.target_index])


def normalise(raw, mean, std):
    """Float64 z-score then subtract the window's last value; the service does exactly this."""
    z = (raw - mean) / std
    last = z[:, -1:]
    return (z - last).astype(np.float32), last


def ridge_fit(x, y, lam):
    xb = np.hstack([x, np.ones((x.shape[0], 1))])
    reg = lam * np.eye(xb.shape[1])
    reg[-1, -1] = 0.0
    return np.linalg.solve(xb.T @ xb + reg, xb.T @ y)


def ridge_predict(w, x):
    return np.hstack([x, np.ones((x.shape[0], 1))]) @ w


def scores(pred, target):
    err = pred - target
    return {"mse": float(np.mean(err ** 2)), "mae": float(np.mean(np.abs(err)))}


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ETTh1.csv")
    p.add_argument("--out", required=True, help="model directory to write")
    p.add_argument("--parity", help="parity fixture JSON to write")
    p.add_argument("--name", default="etth1-ot-lstm")
    p.add_argument("--version", default="1.0.0")
    p.add_argument("--window", type=int, default=168)
    p.add_argument("--horizon", type=int, default=24)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--patience", type=int, default=6)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--train-highway", action="store_true",
                   help="also fine-tune the ridge-initialised highway (default: keep it fixed)")
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)

    stamps, ot = etth1.load_column(args.data, "OT")
    train = ot[: etth1.TRAIN_END]
    mean, std = float(train.mean()), float(train.std())
    W, H = args.window, args.horizon

    tr_x, tr_y, _ = etth1.windows(ot, 0, etth1.TRAIN_END, W, H)
    va_x, va_y, _ = etth1.windows(ot, etth1.TRAIN_END, etth1.VAL_END, W, H)
    te_x, te_y, te_origins = etth1.windows(ot, etth1.VAL_END, etth1.TEST_END, W, H)

    def prep(x, y):
        xn, last = normalise(x, mean, std)
        yz = (y - mean) / std
        return xn, last, yz

    tr_xn, tr_last, tr_yz = prep(tr_x, tr_y)
    va_xn, va_last, va_yz = prep(va_x, va_y)
    te_xn, te_last, te_yz = prep(te_x, te_y)

    # Baselines, on the normalised (z) scale like the published numbers.
    naive_test = scores(np.repeat(te_last, H, axis=1), te_yz)
    best = None
    for lam in [0.1, 1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]:
        w = ridge_fit(tr_xn.astype(np.float64), tr_yz - tr_last, lam)
        val = scores(ridge_predict(w, va_xn) + va_last, va_yz)["mse"]
        if best is None or val < best[0]:
            best = (val, lam, w)
    ridge_lam, ridge_w = best[1], best[2]
    ridge_test = scores(ridge_predict(ridge_w, te_xn) + te_last, te_yz)
    print(f"repeat-last test: {naive_test}", flush=True)
    print(f"ridge (lambda={ridge_lam}) test: {ridge_test}", flush=True)

    model = LstmForecaster(1, args.hidden, args.layers, W, H, 0)
    # Start the highway at the ridge solution: the LSTM only has to learn what a linear model misses.
    with torch.no_grad():
        model.highway.weight.copy_(torch.tensor(ridge_w[:-1].T, dtype=torch.float32))
        model.highway.bias.copy_(torch.tensor(ridge_w[-1], dtype=torch.float32))
        # Small but non-zero: a zero head would also zero the LSTM's gradients.
        model.head.weight.mul_(0.1)
        model.head.bias.zero_()

    def to_t(a):
        return torch.tensor(a, dtype=torch.float32)

    xt, yt = to_t(tr_xn[:, :, None]), to_t(tr_yz - tr_last)
    xv, yv = to_t(va_xn[:, :, None]), to_t(va_yz - va_last)
    if not args.train_highway:
        model.highway.requires_grad_(False)
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(trainable, lr=args.lr, weight_decay=args.weight_decay)
    loss_fn = nn.MSELoss()

    def val_mse():
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(xv), yv))

    best_state, best_val, stale = None, val_mse(), 0
    print(f"epoch 0 val_mse {best_val:.5f} (ridge start)", flush=True)
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    for epoch in range(1, args.epochs + 1):
        t0 = time.time()
        model.train()
        perm = torch.randperm(len(xt))
        total = 0.0
        for i in range(0, len(xt), args.batch_size):
            idx = perm[i : i + args.batch_size]
            opt.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            total += float(loss.detach()) * len(idx)
        v = val_mse()
        print(f"epoch {epoch} train_mse {total / len(xt):.5f} val_mse {v:.5f} ({time.time() - t0:.1f}s)", flush=True)
        if v < best_val - 1e-6:
            best_val, stale = v, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= args.patience:
                break
    model.load_state_dict(best_state)
    model.eval()

    with torch.no_grad():
        te_pred = model(to_t(te_xn[:, :, None])).numpy().astype(np.float64) + te_last
    lstm_test = scores(te_pred, te_yz)
    print(f"lstm test: {lstm_test}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    # Frozen: weights become constants and the submodules' code is inlined into one forward, so
    # loading compiles ~60 lines instead of nn.LSTM's every branch (2 ms against ~15-30 ms).
    scripted = torch.jit.freeze(torch.jit.script(model.eval()))
    model_path = os.path.join(args.out, "model.pt")
    scripted.save(model_path)

    q_edges = np.quantile(train, np.linspace(0, 1, 11)).tolist()
    meta = {
        "format_version": 1,
        "name": args.name,
        "version": args.version,
        "created_at": dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z"),
        "torch_version": torch.__version__.split("+")[0],
        "model_sha256": sha256_file(model_path),
        "input": {"window": W, "features": ["OT"], "target": "OT", "frequency": "1h"},
        "output": {"horizon": H},
        "preprocessing": [
            {"kind": "z_score", "mean": [mean], "std": [std]},
            {"kind": "subtract_last"},
        ],
        "training_stats": {
            "OT": {
                "mean": mean,
                "std": std,
                "min": float(train.min()),
                "max": float(train.max()),
                "quantile_edges": q_edges,
                "windows": drift_calibration.window_cells(train.tolist(), mean, std, W),
            }
        },
        "evaluation": {
            "dataset": "ETTh1",
            "protocol": "train [0,8640), val targets [8640,11520), test targets [11520,14400); z-score with train stats; normalised scale; all sliding test windows",
            "test_windows": int(len(te_x)),
            "horizon": H,
            "mse": lstm_test["mse"],
            "mae": lstm_test["mae"],
            "baselines": {
                "repeat_last": naive_test,
                "ridge": dict(ridge_test, **{"lambda": ridge_lam}),
            },
        },
        "training": {
            "data": "ETTh1.csv (OT)",
            "architecture": f"LSTM(1, {args.hidden}, layers={args.layers}) -> Linear({args.hidden}, {H}) + Linear({W}, {H}) highway",
            "epochs_run": epoch,
            "best_val_mse": best_val,
            "seed": args.seed,
            "batch_size": args.batch_size,
            "lr": args.lr,
        },
    }
    with open(os.path.join(args.out, "model.json"), "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")

    if args.parity:
        # Reload the exported file so the fixture reflects exactly what the service will load.
        loaded = torch.jit.load(model_path)
        pick = np.linspace(0, len(te_x) - 1, 32).round().astype(int)
        xn, last = normalise(te_x[pick], mean, std)
        with torch.no_grad():
            out = loaded(to_t(xn[:, :, None])).numpy()
        forecasts = (out.astype(np.float64) + last) * std + mean
        fixture = {
            "model": {"name": args.name, "version": args.version, "model_sha256": meta["model_sha256"]},
            "note": "PyTorch forecasts on the original scale for 32 ETTh1 test windows, one batch of 32",
            "cases": [
                {
                    "id": f"test-{int(te_origins[i])}",
                    "last_timestamp": stamps[te_origins[i] - 1],
                    "values": te_x[i].tolist(),
                    "forecast": forecasts[k].tolist(),
                }
                for k, i in enumerate(pick)
            ],
        }
        os.makedirs(os.path.dirname(os.path.abspath(args.parity)), exist_ok=True)
        with open(args.parity, "w") as f:
            json.dump(fixture, f)
            f.write("\n")
    print(json.dumps(meta["evaluation"], indent=2))


if __name__ == "__main__":
    main()
