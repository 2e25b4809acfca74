"""FastAPI + ONNX Runtime: `uvicorn server_onnx:app`, serving the bundled model.onnx."""
import os

import onnxruntime as ort
from fastapi import FastAPI

from common import MODEL_DIR, THREADS, ForecastRequest, answer, prepare

options = ort.SessionOptions()
options.intra_op_num_threads = THREADS
options.inter_op_num_threads = 1
session = ort.InferenceSession(os.environ["ONNX_MODEL"], options, providers=["CPUExecutionProvider"])
app = FastAPI()


@app.post("/v1/forecast")
def forecast(request: ForecastRequest):
    x, last = prepare(request)
    (y,) = session.run(None, {"x": x})
    return answer(request, y, last)
