"""Writes small ONNX models with the real exporters, and each framework's own predictions.

Every fixture is a model folder the worker serves unchanged (`model.onnx`, and for neural
networks a `model.json` naming the labels), plus `expected.json`: held-out rows and what the
framework itself predicts for them (`predict_proba` and `predict`, or `predict` for a
regressor). The worker's tests load these folders and must agree with those numbers; they
need no Python. Run `make fixtures` to regenerate (requirements pinned in requirements-fixtures.txt).

Data sets are the ones bundled inside scikit-learn's wheel: no download.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import numpy as np
from sklearn.datasets import load_breast_cancer, load_diabetes, load_wine
from sklearn.model_selection import train_test_split

HELD_OUT = 24
SEED = 0


def log(msg: str) -> None:
    print(msg, flush=True)


def split(loader, rows: int = HELD_OUT):
    data = loader()
    x = data.data.astype(np.float32)
    y = data.target
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=rows, random_state=SEED, stratify=None if loader is load_diabetes else y
    )
    return x_train, x_test, y_train, y_test, data


def write(out: Path, name: str, onnx_bytes: bytes, expected: dict, settings: dict | None = None):
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    (folder / "model.onnx").write_bytes(onnx_bytes)
    if settings is not None:
        (folder / "model.json").write_text(json.dumps(settings, indent=2) + "\n")
    (folder / "expected.json").write_text(json.dumps(expected) + "\n")
    log(f"  {name}: model.onnx {len(onnx_bytes) / 1024:.1f} KiB, {len(expected['inputs'])} rows")


def classification(x_test, proba, labels) -> dict:
    proba = np.asarray(proba, dtype=np.float64)
    return {
        "task": "classification",
        "inputs": x_test.astype(np.float32).tolist(),
        "probabilities": proba.tolist(),
        "labels": [str(label) for label in labels],
    }


def regression(x_test, values) -> dict:
    values = np.asarray(values, dtype=np.float64).reshape(len(x_test), -1)
    return {
        "task": "regression",
        "inputs": x_test.astype(np.float32).tolist(),
        "values": values.tolist(),
    }


def sklearn_fixtures(out: Path) -> None:
    from skl2onnx import to_onnx
    from sklearn.ensemble import (
        GradientBoostingClassifier,
        RandomForestClassifier,
        RandomForestRegressor,
    )
    from sklearn.linear_model import LinearRegression, LogisticRegression
    from sklearn.neural_network import MLPClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    wine = split(load_wine)
    cancer = split(load_breast_cancer)
    diabetes = split(load_diabetes)

    def classifier(name, model, data, string_labels=False):
        x_train, x_test, y_train, _, dataset = data
        if string_labels:
            names = np.array([str(n) for n in dataset.target_names])
            y_train = names[y_train]
        model.fit(x_train, y_train)
        onx = to_onnx(model, x_train[:1], target_opset={"": 17, "ai.onnx.ml": 3})
        expected = classification(x_test, model.predict_proba(x_test), model.predict(x_test))
        write(out, name, onx.SerializeToString(), expected)

    def regressor(name, model, data):
        x_train, x_test, y_train, _, _ = data
        model.fit(x_train, y_train)
        onx = to_onnx(model, x_train[:1], target_opset={"": 17, "ai.onnx.ml": 3})
        write(out, name, onx.SerializeToString(), regression(x_test, model.predict(x_test)))

    log("scikit-learn (skl2onnx)")
    classifier(
        "sklearn-random-forest",
        RandomForestClassifier(n_estimators=12, max_depth=5, random_state=SEED),
        wine,
        string_labels=True,
    )
    classifier(
        "sklearn-gradient-boosting",
        GradientBoostingClassifier(n_estimators=20, max_depth=3, random_state=SEED),
        cancer,
        string_labels=True,
    )
    classifier(
        "sklearn-gradient-boosting-multiclass",
        GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=SEED),
        wine,
    )
    classifier(
        "sklearn-logistic-regression",
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        wine,
    )
    classifier(
        "sklearn-pipeline-scaler",
        make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)),
        cancer,
        string_labels=True,
    )
    classifier(
        "sklearn-mlp",
        make_pipeline(
            StandardScaler(),
            MLPClassifier(hidden_layer_sizes=(16,), max_iter=600, random_state=SEED),
        ),
        wine,
    )
    regressor(
        "sklearn-random-forest-regressor",
        RandomForestRegressor(n_estimators=8, max_depth=4, random_state=SEED),
        diabetes,
    )
    regressor("sklearn-linear-regression", LinearRegression(), diabetes)


def xgboost_fixtures(out: Path) -> None:
    import xgboost
    from onnxmltools.convert import convert_xgboost
    from onnxmltools.convert.common.data_types import FloatTensorType

    log("XGBoost (onnxmltools)")
    for name, data in [("xgboost-binary", split(load_breast_cancer)), ("xgboost-multiclass", split(load_wine))]:
        x_train, x_test, y_train, _, _ = data
        model = xgboost.XGBClassifier(n_estimators=15, max_depth=3, random_state=SEED)
        model.fit(x_train, y_train)
        onx = convert_xgboost(
            model, initial_types=[("features", FloatTensorType([None, x_train.shape[1]]))],
            target_opset=15,
        )
        expected = classification(x_test, model.predict_proba(x_test), model.predict(x_test))
        write(out, name, onx.SerializeToString(), expected)
    x_train, x_test, y_train, _, _ = split(load_diabetes)
    model = xgboost.XGBRegressor(n_estimators=15, max_depth=3, random_state=SEED)
    model.fit(x_train, y_train)
    onx = convert_xgboost(
        model, initial_types=[("features", FloatTensorType([None, x_train.shape[1]]))],
        target_opset=15,
    )
    write(out, "xgboost-regressor", onx.SerializeToString(), regression(x_test, model.predict(x_test)))


def lightgbm_fixtures(out: Path) -> None:
    import lightgbm
    from onnxmltools.convert import convert_lightgbm
    from onnxmltools.convert.common.data_types import FloatTensorType

    log("LightGBM (onnxmltools)")
    for name, data in [("lightgbm-binary", split(load_breast_cancer)), ("lightgbm-multiclass", split(load_wine))]:
        x_train, x_test, y_train, _, _ = data
        model = lightgbm.LGBMClassifier(
            n_estimators=15, num_leaves=8, random_state=SEED, verbose=-1
        )
        model.fit(x_train, y_train)
        onx = convert_lightgbm(
            model, initial_types=[("features", FloatTensorType([None, x_train.shape[1]]))],
            target_opset=15, zipmap=True,
        )
        expected = classification(x_test, model.predict_proba(x_test), model.predict(x_test))
        write(out, name, onx.SerializeToString(), expected)


def torch_fixtures(out: Path) -> None:
    import torch
    from torch import nn

    log(f"PyTorch {torch.__version__} (torch.onnx)")
    torch.manual_seed(SEED)
    x_train, x_test, y_train, _, dataset = split(load_wine)
    mean, std = x_train.mean(0), x_train.std(0)
    labels = [str(n) for n in dataset.target_names]

    class Standardize(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("mean", torch.tensor(mean))
            self.register_buffer("std", torch.tensor(std))

        def forward(self, x):
            return (x - self.mean) / self.std

    class Conv(nn.Module):
        """A small 1-D CNN over the feature vector."""

        def __init__(self, features: int, classes: int):
            super().__init__()
            self.norm = Standardize()
            self.conv = nn.Sequential(
                nn.Conv1d(1, 4, kernel_size=3, padding=1), nn.ReLU(), nn.MaxPool1d(2)
            )
            self.head = nn.Linear(4 * (features // 2), classes)

        def forward(self, x):
            h = self.conv(self.norm(x).unsqueeze(1))
            return torch.softmax(self.head(h.flatten(1)), dim=-1)

    class Recurrent(nn.Module):
        """A GRU reading the features as a sequence of scalars."""

        def __init__(self, classes: int):
            super().__init__()
            self.norm = Standardize()
            self.gru = nn.GRU(input_size=1, hidden_size=8, batch_first=True)
            self.head = nn.Linear(8, classes)

        def forward(self, x):
            _, h = self.gru(self.norm(x).unsqueeze(-1))
            return torch.softmax(self.head(h[-1]), dim=-1)

    features, classes = x_train.shape[1], len(labels)
    nets = {
        "pytorch-mlp": nn.Sequential(
            Standardize(), nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes), nn.Softmax(-1)
        ),
        "pytorch-cnn": Conv(features, classes),
        "pytorch-gru": Recurrent(classes),
    }
    xt = torch.tensor(x_train)
    yt = torch.tensor(y_train)
    for name, net in nets.items():
        proba, onnx_bytes = train_and_export(net, xt, yt, 150, torch.tensor(x_test), "features")
        expected = classification(x_test, proba, [labels[i] for i in proba.argmax(1)])
        write(out, name, onnx_bytes, expected, {"labels": labels})


def train_and_export(net, x, y, steps: int, x_test, input_name: str):
    """Trains `net` (ending in a softmax) with Adam on the negative log-likelihood, then
    returns its probabilities on `x_test` and its `torch.onnx.export` (input `input_name`,
    output `probabilities`, the batch dynamic)."""
    import io

    import torch
    from torch import nn

    optimizer = torch.optim.Adam(net.parameters(), lr=0.01)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = nn.functional.nll_loss(torch.log(net(x) + 1e-9), y)
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        proba = net(x_test).numpy()
    buffer = io.BytesIO()
    torch.onnx.export(
        net,
        (x_test[:2],),
        buffer,
        input_names=[input_name],
        output_names=["probabilities"],
        dynamic_axes={input_name: {0: "batch"}, "probabilities": {0: "batch"}},
        opset_version=17,
        dynamo=False,
    )
    return proba, buffer.getvalue()


def keras_fixtures(out: Path) -> None:
    import tensorflow as tf
    import tf2onnx

    log(f"TensorFlow {tf.__version__} / Keras (tf2onnx {tf2onnx.__version__})")
    tf.keras.utils.set_random_seed(SEED)
    x_train, x_test, y_train, _, dataset = split(load_wine)
    labels = [str(n) for n in dataset.target_names]
    # Statistics given as constants: an adapted layer keeps them as variables, which the
    # traced function would turn into extra graph inputs.
    norm = tf.keras.layers.Normalization(mean=x_train.mean(0), variance=x_train.var(0))
    model = tf.keras.Sequential(
        [
            tf.keras.Input(shape=(x_train.shape[1],), name="features"),
            norm,
            tf.keras.layers.Dense(16, activation="relu"),
            tf.keras.layers.Dense(len(labels), activation="softmax"),
        ]
    )
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=60, verbose=0)
    proba = model.predict(x_test, verbose=0)
    spec = (tf.TensorSpec((None, x_train.shape[1]), tf.float32, name="features"),)
    # Keras 3 models convert through a traced function (tf2onnx's from_keras predates
    # Keras 3), with the variables frozen into constants first.
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    serve = tf.function(lambda features: model(features, training=False))
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function(*spec))
    onx, _ = tf2onnx.convert.from_function(
        tf.function(lambda features: frozen(features)), input_signature=spec, opset=17
    )
    expected = classification(x_test, proba, [labels[i] for i in proba.argmax(1)])
    write(out, "keras-mlp", onx.SerializeToString(), expected, {"labels": labels})


def image_fixtures(out: Path) -> None:
    """A 2-D CNN over the 8x8 digits bundled with scikit-learn: input `[N, 1, 8, 8]`."""
    import torch
    from sklearn.datasets import load_digits
    from torch import nn

    log(f"PyTorch {torch.__version__} (images)")
    torch.manual_seed(SEED)
    x_train, x_test, y_train, _, _ = split(load_digits)
    labels = [str(d) for d in range(10)]
    image = lambda x: torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    net = nn.Sequential(
        nn.Conv2d(1, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
        nn.Softmax(-1),
    )
    proba, onnx_bytes = train_and_export(
        net, image(x_train), torch.tensor(y_train), 120, image(x_test), "image"
    )
    # The rows the worker takes: each image's 64 pixels (scaled to 0..1), row-major.
    expected = classification(
        (x_test / 16.0).astype(np.float32), proba, [labels[i] for i in proba.argmax(1)]
    )
    write(out, "pytorch-digits-cnn", onnx_bytes, expected, {"labels": labels})


FAMILIES = {
    "images": image_fixtures,
    "sklearn": sklearn_fixtures,
    "xgboost": xgboost_fixtures,
    "lightgbm": lightgbm_fixtures,
    "pytorch": torch_fixtures,
    "keras": keras_fixtures,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--only", choices=sorted(FAMILIES), action="append")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for family in args.only or FAMILIES:
        FAMILIES[family](args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
