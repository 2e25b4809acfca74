"""Accuracy sweep for the bundled LSTM: which training ideas beat ridge on validation?

Every variant keeps the service contract (one feature, 168 z-scored values shifted by their last
value, 24 out) and the bundled architecture's fixed ridge "highway", so the LSTM learns only the
residual a linear autoregression leaves. Each (variant, seed) trains in its own worker process.
Selection is on validation only; test is printed so the table in ../README.md can be checked, not
to choose by.

Prints one line per run, then one per variant: mean over seeds, the seeds' averaged forecast (an
ensemble), and the seed with the best validation score.

Usage (GPU: about 7 minutes for the default 16 variants x 4 seeds on one H200 with 12 workers;
CPU works too, about 1.5 minutes per run per core):
  python sweep.py --data ../data/ETTh1.csv [--etth2 ETTh2.csv] [--seeds 1,2,3,4] [--workers 12]
      [--only base_h64l2,diff] [--device cpu]
"""
import argparse
import multiprocessing as mp
import os
import sys
import time

import numpy as np
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import etth1  # noqa: E402
from train import normalise, ridge_fit, ridge_predict  # noqa: E402

W, H = 168, 24
RIDGE_LAMBDAS = [0.1, 1.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0]

# Overrides of the bundled model's training settings (train.py's defaults).
VARIANTS = {
    "base_h64l2": {},
    "h32l1": dict(hidden=32, layers=1),
    "h64l1": dict(hidden=64, layers=1),
    "h128l1_lr3e-4": dict(hidden=128, layers=1, lr=3e-4),
    "drop0.3_wd1e-4": dict(dropout=0.3, wd=1e-4),
    # RevIN-style: the LSTM sees the window divided by its own std, its residual is scaled back.
    "revin": dict(mode="revin"),
    "revin_h32l1": dict(mode="revin", hidden=32, layers=1),
    # A second input channel of scaled first differences, computed inside the model.
    "diff": dict(mode="diff"),
    # ETTh2's OT (the sister transformer, its own training rows and statistics) as extra windows.
    "aug_etth2": dict(aug_etth2=True),
    "aug_etth2_revin": dict(aug_etth2=True, mode="revin"),
    "l1loss": dict(loss="l1"),
    "huber": dict(loss="huber"),
    "noise0.05": dict(noise=0.05),
    "joint_hw_lr3e-4": dict(train_highway=True, lr=3e-4),
    "bs32_lr3e-4": dict(batch_size=32, lr=3e-4),
    "h128l2_lr3e-4_drop0.2": dict(hidden=128, layers=2, lr=3e-4, dropout=0.2),
}
DEFAULTS = dict(hidden=64, layers=2, dropout=0.0, mode="plain", lr=1e-3, wd=0.0, batch_size=128, epochs=40,
                patience=6, loss="mse", aug_etth2=False, train_highway=False, noise=0.0)


def splits(path):
    """Normalised (inputs, last values, z targets) for train/val/test of one ETT file's OT."""
    _, series = etth1.load_column(path, "OT")
    train = series[: etth1.TRAIN_END]
    mean, std = float(train.mean()), float(train.std())
    out = {}
    for name, (start, end) in {"train": (0, etth1.TRAIN_END), "val": (etth1.TRAIN_END, etth1.VAL_END),
                               "test": (etth1.VAL_END, etth1.TEST_END)}.items():
        x, y, _ = etth1.windows(series, start, end, W, H)
        xn, last = normalise(x, mean, std)
        out[name] = (xn, last, (y - mean) / std)
    return out


class ResidualLstm(nn.Module):
    def __init__(self, hidden, layers, dropout, mode):
        super().__init__()
        self.lstm = nn.LSTM(2 if mode == "diff" else 1, hidden, num_layers=layers, batch_first=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, H)
        self.highway = nn.Linear(W, H)
        self.mode = mode
        with torch.no_grad():
            self.head.weight.mul_(0.1)
            self.head.bias.zero_()

    def forward(self, x):  # [batch, W] -> [batch, H]
        lstm_in, scale = x, None
        if self.mode == "revin":
            scale = x.std(dim=1, keepdim=True) + 1e-3
            lstm_in = x / scale
        seq = lstm_in[:, :, None]
        if self.mode == "diff":
            diff = torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:] - x[:, :-1]], 1) * 10.0
            seq = torch.stack([x, diff], 2)
        out, _ = self.lstm(seq)
        residual = self.head(out[:, -1])
        if scale is not None:
            residual = residual * scale
        return self.highway(x) + residual


def train_one(job):
    variant, seed, args = job
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(1)
    dev = torch.device(args.device)
    cfg = dict(DEFAULTS, **VARIANTS[variant])
    if args.max_epochs:
        cfg["epochs"] = min(cfg["epochs"], args.max_epochs)
    etth1_data = splits(args.data)
    tr_x, tr_last, tr_y = etth1_data["train"]
    ridge = None
    for lam in RIDGE_LAMBDAS:
        w = ridge_fit(tr_x.astype(np.float64), tr_y - tr_last, lam)
        va_x, va_last, va_y = etth1_data["val"]
        val = float(np.mean((ridge_predict(w, va_x) + va_last - va_y) ** 2))
        if ridge is None or val < ridge[0]:
            ridge = (val, w)
    ridge_w = ridge[1]

    def tensor(a):
        return torch.tensor(a, dtype=torch.float32, device=dev)

    inputs, targets = [tr_x], [tr_y - tr_last]
    if cfg["aug_etth2"]:
        x2, last2, y2 = splits(args.etth2)["train"]
        inputs.append(x2)
        targets.append(y2 - last2)
    x_train, y_train = tensor(np.concatenate(inputs)), tensor(np.concatenate(targets))
    x_val, y_val = tensor(etth1_data["val"][0]), tensor(etth1_data["val"][2] - etth1_data["val"][1])
    x_test, y_test = tensor(etth1_data["test"][0]), tensor(etth1_data["test"][2] - etth1_data["test"][1])

    model = ResidualLstm(cfg["hidden"], cfg["layers"], cfg["dropout"], cfg["mode"]).to(dev)
    with torch.no_grad():
        model.highway.weight.copy_(tensor(ridge_w[:-1].T))
        model.highway.bias.copy_(tensor(ridge_w[-1]))
    if not cfg["train_highway"]:
        model.highway.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=cfg["lr"], weight_decay=cfg["wd"])
    loss_fn = {"mse": nn.MSELoss(), "l1": nn.L1Loss(), "huber": nn.HuberLoss(delta=0.1)}[cfg["loss"]]
    mse = nn.MSELoss()

    def evaluate(x, y):
        model.eval()
        with torch.no_grad():
            return float(mse(model(x), y))

    start_val = best_val = evaluate(x_val, y_val)
    best_state, stale = {k: v.clone() for k, v in model.state_dict().items()}, 0
    for _ in range(cfg["epochs"]):
        model.train()
        perm = torch.randperm(len(x_train), device=dev)
        for i in range(0, len(x_train), cfg["batch_size"]):
            idx = perm[i:i + cfg["batch_size"]]
            xb = x_train[idx]
            if cfg["noise"] > 0:
                xb = xb + cfg["noise"] * torch.randn_like(xb)
            opt.zero_grad()
            loss_fn(model(xb), y_train[idx]).backward()
            nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
        val = evaluate(x_val, y_val)
        if val < best_val - 1e-6:
            best_val, stale = val, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= cfg["patience"]:
                break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        val_pred, test_pred = model(x_val).cpu().numpy(), model(x_test).cpu().numpy()
    return variant, seed, start_val, best_val, evaluate(x_test, y_test), val_pred, test_pred


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="ETTh1.csv")
    p.add_argument("--etth2", help="ETTh2.csv; without it the aug_etth2 variants are skipped")
    p.add_argument("--seeds", default="1,2,3,4")
    p.add_argument("--workers", type=int, default=os.cpu_count())
    p.add_argument("--only", help="comma-separated variant names")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-epochs", type=int, help="cap every variant's epochs (a quick smoke run)")
    args = p.parse_args()
    names = [v for v in VARIANTS
             if (not args.only or v in args.only.split(",")) and (args.etth2 or not VARIANTS[v].get("aug_etth2"))]
    jobs = [(v, int(s), args) for v in names for s in args.seeds.split(",")]
    started = time.time()
    results = {}
    with mp.get_context("spawn").Pool(args.workers) as pool:
        for variant, seed, start_val, best_val, test, val_pred, test_pred in pool.imap_unordered(train_one, jobs):
            print(f"{time.time() - started:6.1f}s {variant:24s} seed {seed} start_val {start_val:.5f} "
                  f"best_val {best_val:.5f} test {test:.5f}", flush=True)
            results.setdefault(variant, []).append((best_val, test, val_pred, test_pred))

    data = splits(args.data)
    y_val = data["val"][2] - data["val"][1]
    y_test = data["test"][2] - data["test"][1]
    print("\nvariant                   mean_val  mean_test  ens_val   ens_test  best-val seed: val / test")
    for v in names:
        runs = results[v]
        ens_val = float(np.mean((np.mean([r[2] for r in runs], 0) - y_val) ** 2))
        ens_test = float(np.mean((np.mean([r[3] for r in runs], 0) - y_test) ** 2))
        best = min(runs, key=lambda r: r[0])
        print(f"{v:24s}  {np.mean([r[0] for r in runs]):.5f}  {np.mean([r[1] for r in runs]):.5f}   "
              f"{ens_val:.5f}  {ens_test:.5f}   {best[0]:.5f} / {best[1]:.5f}")


if __name__ == "__main__":
    main()
