"""Drift calibration: which windows the model saw in training, for the service's `InputDrift`.

A single 168-hour window never looks like a whole year, so comparing one window with the year's
distribution (PSI against deciles) alarms on the model's own training data. Instead this records,
per feature, every (mean, min, max) the training windows took, standardised with the training mean
and std and quantised into cells of `CELL` standard deviations. At serve time, a request window's
drift is how far (in training standard deviations) its (mean, min, max) lies from the nearest
cell a training window occupied: 0 for anything the training data contained, growing as a window
leaves it. Pure Python, so it runs without PyTorch:

    python drift_calibration.py --data ../data/ETTh1.csv --model ../etth1-ot-lstm/model.json

`train.py` calls `window_cells` for every model it writes.
"""

import argparse
import csv
import json
import math

CELL = 0.25
TRAIN_END = 8640  # the ETTh1 protocol's training rows [0, 8640)


def window_cells(values, mean, std, window, cell=CELL):
    """Sorted [mean, min, max] cell indices of every sliding window of `values` (training rows)."""
    z = [(v - mean) / std for v in values]
    cells = set()
    total = sum(z[:window])
    for end in range(window, len(z) + 1):
        if end > window:
            total += z[end - 1] - z[end - window - 1]
        chunk = z[end - window : end]
        stats = (total / window, min(chunk), max(chunk))
        cells.add(tuple(math.floor(s / cell) for s in stats))
    return {"cell": cell, "cells": [list(c) for c in sorted(cells)]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="ETTh1.csv")
    parser.add_argument("--model", required=True, help="model.json to update in place")
    parser.add_argument("--train-rows", type=int, default=TRAIN_END)
    args = parser.parse_args()
    with open(args.model) as f:
        meta = json.load(f)
    with open(args.data) as f:
        rows = list(csv.DictReader(f))[: args.train_rows]
    window = meta["input"]["window"]
    for feature, stats in meta["training_stats"].items():
        values = [float(r[feature]) for r in rows]
        stats["windows"] = window_cells(values, stats["mean"], stats["std"], window)
        print(f"{feature}: {len(stats['windows']['cells'])} cells of {CELL} std")
    with open(args.model, "w") as f:
        json.dump(meta, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
