"""Talks to a server with the real tritonclient (tritonclient.http, from the locked tools venv)
and compares its Open Inference Protocol answers with the server's own /v1 ones.

    oip_client.py HOST:PORT

Prints one JSON object: liveness, readiness, the model metadata tritonclient read, and for each
case (binary or JSON tensors, FP64 or FP32 inputs, 1 or 64 series) whether the forecasts equal
/v1's to the bit. For FP32 inputs, /v1 is sent the same values rounded to FP32, so the answers
must still be equal to the bit.
"""

import json
import math
import sys
import urllib.request

import numpy as np
import tritonclient.http as httpclient


def windows(count, rows, features):
    """ETTh1-like windows: a daily cycle around 15 degrees, a phase per series."""
    t = np.arange(rows, dtype=np.float64)
    out = np.empty((count, rows, features), dtype=np.float64)
    for i in range(count):
        for f in range(features):
            out[i, :, f] = 15.0 + 4.0 * np.sin(t * 2 * math.pi / 24 + 0.1 * i + f) + 0.001 * i
    return out


def v1_forecasts(base, values, ids):
    body = {"series": [{"id": ids[i], "values": values[i].tolist()} for i in range(len(ids))]}
    if values.shape[2] == 1:
        for s in body["series"]:
            s["values"] = [row[0] for row in s["values"]]
    request = urllib.request.Request(
        f"http://{base}/v1/forecast",
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json"},
    )
    with urllib.request.urlopen(request) as answer:
        return np.array([f["values"] for f in json.load(answer)["forecasts"]], dtype=np.float64)


def case(client, base, model, meta, count, datatype, binary):
    _, rows, features = meta["inputs"][0]["shape"]
    values = windows(count, rows, features)
    if datatype == "FP32":
        values = values.astype(np.float32)
    ids = np.array([f"meter-{i}".encode() for i in range(count)], dtype=np.object_)
    window = httpclient.InferInput("window", list(values.shape), datatype)
    window.set_data_from_numpy(values, binary_data=binary)
    series_id = httpclient.InferInput("series_id", [count], "BYTES")
    series_id.set_data_from_numpy(ids, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("forecast", binary_data=binary)]
    result = client.infer(model, [window, series_id], outputs=outputs, request_id=f"case-{count}")
    got = result.as_numpy("forecast")
    want = v1_forecasts(base, values.astype(np.float64), [i.decode() for i in ids])
    return {
        "series": count,
        "datatype": datatype,
        "binary": binary,
        "shape": list(got.shape),
        "id": result.get_response().get("id"),
        "bit_equal": bool(got.dtype == np.float64 and np.array_equal(got.view(np.uint64), want.view(np.uint64))),
        "max_abs_diff": float(np.max(np.abs(got - want))),
    }


def main():
    base = sys.argv[1]
    client = httpclient.InferenceServerClient(url=base)
    model = client.get_server_metadata() and json.load(
        urllib.request.urlopen(f"http://{base}/v1/model")
    )["name"]
    meta = client.get_model_metadata(model)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(model),
        "server": client.get_server_metadata(),
        "metadata": meta,
        "cases": [
            case(client, base, model, meta, count, datatype, binary)
            for count in (1, 64)
            for datatype in ("FP64", "FP32")
            for binary in (True, False)
        ],
    }
    try:
        client.get_model_metadata("no-such-model")
        report["unknown_model"] = "answered"
    except httpclient.InferenceServerException as e:
        report["unknown_model"] = {"status": e.status(), "message": e.message()}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
