"""FastAPI + TorchScript, as a user would write it: `uvicorn server_torchscript:app`."""
import os

import torch
from fastapi import FastAPI

from common import MODEL_DIR, THREADS, ForecastRequest, answer, prepare

torch.set_num_threads(THREADS)
model = torch.jit.load(os.path.join(MODEL_DIR, "model.pt"))
model.eval()
app = FastAPI()


@app.post("/v1/forecast")
def forecast(request: ForecastRequest):
    x, last = prepare(request)
    with torch.no_grad():
        y = model(torch.from_numpy(x)).numpy()
    return answer(request, y, last)
