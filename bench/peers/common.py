"""What both Python servers share: the model contract and its preprocessing, written plainly."""
import json
import os

import numpy as np
from pydantic import BaseModel

MODEL_DIR = os.environ.get("MODEL_DIR", os.path.join(os.path.dirname(__file__), "../../model_artifacts/etth1-ot-lstm"))
THREADS = int(os.environ.get("THREADS", "1"))

with open(os.path.join(MODEL_DIR, "model.json")) as f:
    META = json.load(f)
WINDOW = META["input"]["window"]
ZSCORE = next(step for step in META["preprocessing"] if step["kind"] == "z_score")
MEAN, STD = ZSCORE["mean"][0], ZSCORE["std"][0]


class Series(BaseModel):
    id: str | None = None
    values: list[float]


class ForecastRequest(BaseModel):
    series: list[Series]


def prepare(request: ForecastRequest):
    x = np.array([s.values[-WINDOW:] for s in request.series], dtype=np.float64)
    z = (x - MEAN) / STD
    last = z[:, -1:]
    return (z - last).astype(np.float32)[:, :, None], last


def answer(request: ForecastRequest, y, last):
    out = (y.astype(np.float64) + last) * STD + MEAN
    return {
        "model": {"name": META["name"], "version": META["version"]},
        "forecasts": [{"id": s.id, "values": row.tolist()} for s, row in zip(request.series, out)],
    }
