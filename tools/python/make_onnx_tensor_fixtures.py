"""Writes the ONNX fixtures whose inputs are named tensors, and their reference outputs.

- `sklearn-column-transformer`: a scikit-learn pipeline over named columns, numbers beside
  string categories (`ColumnTransformer`: scaled `age` and `income`, one-hot `city`, then a
  logistic regression), exported by skl2onnx with one input per column. The reference is
  scikit-learn's own `predict_proba` and `predict`.
- `typed-graph`: a graph built with ONNX's own helpers that takes one input of every
  element type the Open Inference Protocol names (BOOL, UINT8, INT8, INT32, INT64, FP16,
  FP64, BYTES) and a sequence of dynamic length, and returns their sum as FP32 besides
  echoing some of them unchanged. The reference is ONNX Runtime's Python API on the file.

Each folder holds `model.onnx`, optionally `model.json`, and `expected.json`:
`{"inputs": {name: {"datatype", "shape", "data"}}, ...}` with the reference answers. The
worker's tests load these folders and must agree with those numbers; they need no Python.
Run `make fixtures` to regenerate (requirements pinned in requirements-fixtures.txt).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

SEED = 0
ROWS = 16
OIP = {
    np.bool_: "BOOL",
    np.uint8: "UINT8",
    np.int8: "INT8",
    np.int32: "INT32",
    np.int64: "INT64",
    np.float16: "FP16",
    np.float32: "FP32",
    np.float64: "FP64",
    np.object_: "BYTES",
}


def log(msg: str) -> None:
    print(msg, flush=True)


def tensor(array: np.ndarray) -> dict:
    datatype = OIP[array.dtype.type]
    flat = array.reshape(-1)
    if datatype == "BYTES":
        data = [str(v) for v in flat]
    elif datatype == "BOOL":
        data = [bool(v) for v in flat]
    elif datatype.startswith("FP"):
        data = [float(v) for v in flat]
    else:
        data = [int(v) for v in flat]
    return {"datatype": datatype, "shape": list(array.shape), "data": data}


def write(out: Path, name: str, onnx_bytes: bytes, expected: dict, settings: dict | None = None):
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    if settings is not None:
        (folder / "model.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "expected.json").write_text(json.dumps(expected) + "\n")
    log(f"  {name}: model.onnx {len(onnx_bytes) / 1024:.1f} KiB")


def column_transformer(out: Path) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    rng = np.random.default_rng(SEED)
    n = 400
    cities = np.array(["paris", "oslo", "lima", "pune"])
    age = rng.normal(40, 12, n).astype(np.float32)
    income = rng.lognormal(10, 0.5, n).astype(np.float32)
    city = cities[rng.integers(0, len(cities), n)]
    score = 0.06 * (age - 40) + 0.8 * (np.log(income) - 10) + np.where(city == "oslo", 1.2, 0.0)
    y = np.where(score + rng.normal(0, 0.5, n) > 0, "yes", "no")

    columns = {"age": age.reshape(-1, 1), "income": income.reshape(-1, 1), "city": city.reshape(-1, 1)}
    frame = {k: v[:, 0] for k, v in columns.items()}
    import pandas as pd

    df = pd.DataFrame(frame)
    pipe = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("numbers", StandardScaler(), ["age", "income"]),
                        ("category", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                    ]
                ),
            ),
            ("classify", LogisticRegression(max_iter=500)),
        ]
    )
    train, test = df.iloc[: n - ROWS], df.iloc[n - ROWS :]
    pipe.fit(train, y[: n - ROWS])
    onnx_model = to_onnx(
        pipe,
        initial_types=[
            ("age", FloatTensorType([None, 1])),
            ("income", FloatTensorType([None, 1])),
            ("city", StringTensorType([None, 1])),
        ],
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    proba = pipe.predict_proba(test)
    expected = {
        "task": "classification",
        "inputs": {
            "age": tensor(test["age"].to_numpy(np.float32).reshape(-1, 1)),
            "income": tensor(test["income"].to_numpy(np.float32).reshape(-1, 1)),
            "city": tensor(test["city"].to_numpy(object).reshape(-1, 1)),
        },
        "classes": [str(c) for c in pipe.classes_],
        "probabilities": proba.tolist(),
        "labels": [str(v) for v in pipe.predict(test)],
    }
    write(out, "sklearn-column-transformer", onnx_model.SerializeToString(), expected)


def typed_graph(out: Path) -> None:
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper

    kinds = [
        ("flags", TensorProto.BOOL, np.bool_),
        ("small", TensorProto.UINT8, np.uint8),
        ("tiny", TensorProto.INT8, np.int8),
        ("count", TensorProto.INT32, np.int32),
        ("big", TensorProto.INT64, np.int64),
        ("half", TensorProto.FLOAT16, np.float16),
        ("wide", TensorProto.DOUBLE, np.float64),
    ]
    inputs = [helper.make_tensor_value_info(n, t, ["N", 2]) for n, t, _ in kinds]
    inputs.append(helper.make_tensor_value_info("tag", TensorProto.STRING, ["N", 1]))
    inputs.append(helper.make_tensor_value_info("seq", TensorProto.INT64, ["N", "S"]))
    nodes = [helper.make_node("Cast", [n], [f"{n}_f"], to=TensorProto.FLOAT) for n, _, _ in kinds]
    nodes.append(helper.make_node("Sum", [f"{n}_f" for n, _, _ in kinds], ["total"]))
    nodes.append(helper.make_node("Identity", ["half"], ["half_echo"]))
    nodes.append(helper.make_node("Identity", ["flags"], ["flags_echo"]))
    nodes.append(helper.make_node("Identity", ["tag"], ["tag_echo"]))
    nodes.append(helper.make_node("Cast", ["seq"], ["seq_f"], to=TensorProto.FLOAT))
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    nodes.append(helper.make_node("ReduceSum", ["seq_f", "axes"], ["seq_total"], keepdims=1))
    outputs = [
        helper.make_tensor_value_info("total", TensorProto.FLOAT, ["N", 2]),
        helper.make_tensor_value_info("half_echo", TensorProto.FLOAT16, ["N", 2]),
        helper.make_tensor_value_info("flags_echo", TensorProto.BOOL, ["N", 2]),
        helper.make_tensor_value_info("tag_echo", TensorProto.STRING, ["N", 1]),
        helper.make_tensor_value_info("seq_total", TensorProto.FLOAT, ["N", 1]),
    ]
    graph = helper.make_graph(nodes, "typed", inputs, outputs, initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx_bytes = model.SerializeToString()

    rng = np.random.default_rng(SEED)
    n = 4
    feeds = {
        "flags": rng.integers(0, 2, (n, 2)).astype(np.bool_),
        "small": rng.integers(0, 256, (n, 2)).astype(np.uint8),
        "tiny": rng.integers(-128, 128, (n, 2)).astype(np.int8),
        "count": rng.integers(-100000, 100000, (n, 2)).astype(np.int32),
        "big": rng.integers(-(2**40), 2**40, (n, 2)).astype(np.int64),
        "half": rng.normal(0, 4, (n, 2)).astype(np.float16),
        "wide": rng.normal(0, 1e3, (n, 2)).astype(np.float64),
        "tag": np.array([["ünïcode"], ["b"], [""], ["d e"]], dtype=object),
        "seq": rng.integers(-1000, 1000, (n, 3)).astype(np.int64),
    }
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    results = session.run(names, feeds)
    expected = {
        "task": "regression",
        "inputs": {k: tensor(v) for k, v in feeds.items()},
        "outputs": {k: tensor(np.asarray(v)) for k, v in zip(names, results)},
    }
    write(out, "typed-graph", onnx_bytes, expected, {"output": "total", "task": "regression"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    column_transformer(args.out)
    typed_graph(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
