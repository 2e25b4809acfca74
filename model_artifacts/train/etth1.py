"""ETTh1 loading and the standard (Informer) protocol, shared by training and fixture scripts.

Protocol: train rows [0, 8640), validation targets [8640, 11520), test targets [11520, 14400);
z-score with train mean/std (population std, as sklearn's StandardScaler); metrics on the
normalised scale over every sliding window and horizon step.
"""
import csv

import numpy as np

TRAIN_END = 8640
VAL_END = 11520
TEST_END = 14400


def load_column(path, column="OT"):
    """Returns (timestamps, values) for one column, values as float64 exactly as in the CSV."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        stamps, values = [], []
        for row in reader:
            stamps.append(row["date"])
            values.append(float(row[column]))
    return stamps, np.asarray(values, dtype=np.float64)


def windows(series, target_start, target_end, window, horizon):
    """All sliding (input, target) pairs whose targets lie in [target_start, target_end).

    The first window's input may reach back before target_start (Informer's borders do the same).
    Returns (inputs [N, window], targets [N, horizon], origin indices [N]) where origin is the index
    of the first forecast step.
    """
    first_origin = max(target_start, window)
    origins = np.arange(first_origin, target_end - horizon + 1)
    idx_in = origins[:, None] + np.arange(-window, 0)[None, :]
    idx_out = origins[:, None] + np.arange(horizon)[None, :]
    return series[idx_in], series[idx_out], origins
