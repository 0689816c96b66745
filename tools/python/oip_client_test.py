"""The Open Inference Protocol v2 endpoints of the local stack, driven with NVIDIA's own
client, tritonclient[http], in its default binary mode and in JSON mode. Reads
IHUB_V2_URL and IHUB_TOKEN (from .local/dev.env). Prints one line per check; exits 1
when any fails."""
import json
import os
import sys

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

url = os.environ["IHUB_V2_URL"].split("://", 1)[-1]
TOKEN = os.environ["IHUB_TOKEN"]


def headers():
    """A fresh dict per call: tritonclient writes Inference-Header-Content-Length into the
    headers it is given, which would leak into the next (JSON) request."""
    return {"Authorization": "Bearer " + TOKEN}

client = httpclient.InferenceServerClient(url=url, network_timeout=60.0)
failed = 0


def check(name, fn):
    global failed
    try:
        fn()
        print(f"ok   {name}")
    except Exception as e:  # every failure is reported, then the next check runs
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def server():
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata(headers=headers())
    assert meta["name"] == "inferencehub", meta
    assert "binary_tensor_data" in meta["extensions"], meta
    assert client.is_model_ready("iris", headers=headers())


def metadata():
    iris = client.get_model_metadata("iris", headers=headers())
    (inp,) = iris["inputs"]
    assert inp["datatype"] == "FP32" and inp["shape"] == [-1, 4], iris
    assert [o["name"] for o in iris["outputs"]] == ["label", "probability", "scores"], iris
    text = client.get_model_metadata("sentiment", headers=headers())
    assert text["inputs"][0]["datatype"] == "BYTES" and text["inputs"][0]["shape"] == [-1], text


def outputs(binary):
    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "probability", "scores")]


def infer_iris(binary):
    meta = client.get_model_metadata("iris", headers=headers())
    rows = np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]], dtype=np.float32)
    inp = httpclient.InferInput(meta["inputs"][0]["name"], list(rows.shape), "FP32")
    inp.set_data_from_numpy(rows, binary_data=binary)
    result = client.infer("iris", [inp], outputs=outputs(binary), headers=headers())
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == ["setosa", "virginica"], labels
    scores = result.as_numpy("scores")
    assert scores.shape == (2, 3) and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4), scores
    assert np.allclose(result.as_numpy("probability"), scores.max(axis=1), atol=1e-6)


def infer_sentiment(binary):
    meta = client.get_model_metadata("sentiment", headers=headers())
    texts = np.array([b"The support team fixed it in minutes, thank you!", b"The update broke the login page again."], dtype=np.object_)
    inp = httpclient.InferInput(meta["inputs"][0]["name"], [2], "BYTES")
    inp.set_data_from_numpy(texts, binary_data=binary)
    result = client.infer("sentiment", [inp], outputs=outputs(binary), headers=headers())
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == ["positive", "negative"], labels


def infer_wine_by_version(binary):
    meta = client.get_model_metadata("wine", headers=headers())
    row = np.array([[13.32, 3.24, 2.38, 21.5, 92, 1.93, 0.76, 0.45, 1.25, 8.42, 0.55, 1.62, 650]], dtype=np.float32)
    inp = httpclient.InferInput(meta["inputs"][0]["name"], [1, 13], "FP32")
    inp.set_data_from_numpy(row, binary_data=binary)
    result = client.infer("wine", [inp], model_version=meta["versions"][0], outputs=outputs(binary), headers=headers())
    label = result.as_numpy("label")[0]
    assert (label.decode() if isinstance(label, bytes) else label) == "cultivar_3", label


def infer_digits(binary):
    """An image model: the 8x8-digits CNN exported by PyTorch, input [N, 1, 8, 8]."""
    meta = client.get_model_metadata("digits", headers=headers())
    (inp_meta,) = meta["inputs"]
    assert inp_meta["shape"] == [-1, 1, 8, 8], meta
    with open("gpu-worker/tests/fixtures/onnx/pytorch-digits-cnn/expected.json") as f:
        expected = json.load(f)
    images = np.array(expected["inputs"][:3], dtype=np.float32).reshape(3, 1, 8, 8)
    inp = httpclient.InferInput(inp_meta["name"], [3, 1, 8, 8], "FP32")
    inp.set_data_from_numpy(images, binary_data=binary)
    result = client.infer("digits", [inp], outputs=outputs(binary), headers=headers())
    labels = [x.decode() if isinstance(x, bytes) else x for x in result.as_numpy("label")]
    assert labels == expected["labels"][:3], (labels, expected["labels"][:3])
    scores = result.as_numpy("scores")
    assert np.allclose(scores, np.array(expected["probabilities"][:3]), atol=1e-5), scores
    # The same 64 values per image as [N, 64] are refused, naming the shape.
    flat = httpclient.InferInput(inp_meta["name"], [3, 64], "FP32")
    flat.set_data_from_numpy(images.reshape(3, 64), binary_data=binary)
    try:
        client.infer("digits", [flat], headers=headers())
        raise AssertionError("a flattened image was answered")
    except InferenceServerException as e:
        assert e.status() == "400" and "inputs[0].shape" in e.message(), (e.status(), e.message())


def infer_columns(binary):
    """A pipeline over named columns: two FP32 inputs and a BYTES one, and the exporter's own
    `output_label` returned by name beside the gateway's outputs."""
    meta = client.get_model_metadata("columns", headers=headers())
    declared = {i["name"]: (i["datatype"], i["shape"]) for i in meta["inputs"]}
    assert declared == {"age": ("FP32", [-1, 1]), "income": ("FP32", [-1, 1]), "city": ("BYTES", [-1, 1])}, meta
    assert "output_label" in [o["name"] for o in meta["outputs"]], meta
    with open("gpu-worker/tests/fixtures/onnx-tensors/sklearn-column-transformer/expected.json") as f:
        expected = json.load(f)
    # Four rows: the stack's token allows 60 inputs a minute across the whole stack test.
    rows = 4
    inputs = []
    for name, t in expected["inputs"].items():
        dtype = np.object_ if t["datatype"] == "BYTES" else np.float32
        values = [v.encode() for v in t["data"]] if dtype is np.object_ else t["data"]
        data = np.array(values, dtype=dtype).reshape(t["shape"])[:rows]
        inp = httpclient.InferInput(name, list(data.shape), t["datatype"])
        inp.set_data_from_numpy(data, binary_data=binary)
        inputs.append(inp)
    wanted = [httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("label", "scores", "output_label")]
    result = client.infer("columns", inputs, outputs=wanted, headers=headers())
    decode = lambda a: [x.decode() if isinstance(x, bytes) else x for x in a]
    assert decode(result.as_numpy("label")) == expected["labels"][:rows], result.get_response()
    assert decode(result.as_numpy("output_label")) == expected["labels"][:rows]
    assert np.allclose(result.as_numpy("scores"), np.array(expected["probabilities"][:rows]), atol=1e-5)
    # A column missing is refused, naming the inputs.
    try:
        client.infer("columns", inputs[:2], headers=headers())
        raise AssertionError("a request without `city` was answered")
    except InferenceServerException as e:
        assert e.status() == "400" and "city" in e.message(), (e.status(), e.message())


def refusals():
    inp = httpclient.InferInput("features", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    try:
        client.infer("iris", [inp], headers=headers())
        raise AssertionError("a wrong shape was answered")
    except InferenceServerException as e:
        assert e.status() == "400" and "inputs[0].shape" in e.message(), (e.status(), e.message())
    try:
        client.get_model_metadata("iris")
        raise AssertionError("no token was answered")
    except InferenceServerException as e:
        assert e.status() == "401", (e.status(), e.message())
    try:
        client.get_model_metadata("iris", model_version="no-such-version", headers=headers())
        raise AssertionError("an unknown version was answered")
    except InferenceServerException as e:
        assert e.status() == "404", (e.status(), e.message())


check("server live, ready and metadata", server)
check("model metadata of a tabular and a text model", metadata)
for binary in (True, False):
    mode = "binary" if binary else "JSON"
    check(f"iris, 2 rows, {mode}", lambda: infer_iris(binary))
    check(f"sentiment, 2 texts, {mode}", lambda: infer_sentiment(binary))
    check(f"wine by version, {mode}", lambda: infer_wine_by_version(binary))
    check(f"digits (PyTorch CNN, [3, 1, 8, 8] images), {mode}", lambda: infer_digits(binary))
    check(f"columns (scikit-learn over FP32 and BYTES columns), {mode}", lambda: infer_columns(binary))
check("bad shape 400 naming the field, no token 401, unknown version 404", refusals)
sys.exit(1 if failed else 0)
