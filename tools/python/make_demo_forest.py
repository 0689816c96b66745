"""The third demo model: a scikit-learn random forest on the wine data set, as ONNX.

The data set ships inside scikit-learn's wheel (no download). The forest is exported with
skl2onnx exactly as a user would, ZipMap and all, and served by the worker unchanged; a
`model.json` beside it names the features for `GET /v1/models`.
"""

import argparse
import json
from pathlib import Path

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_wine
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    args = parser.parse_args()

    wine = load_wine()
    x = wine.data.astype(np.float32)
    names = np.array([f"cultivar_{i + 1}" for i in range(len(wine.target_names))])
    y = names[wine.target]
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.25, random_state=0, stratify=y
    )
    forest = RandomForestClassifier(n_estimators=100, max_depth=8, random_state=0, n_jobs=1)
    forest.fit(x_train, y_train)
    accuracy = float((forest.predict(x_test) == y_test).mean())

    onx = to_onnx(forest, x_train[:1], target_opset={"": 17, "ai.onnx.ml": 3})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "model.onnx").write_bytes(onx.SerializeToString())
    (args.out / "model.json").write_text(
        json.dumps({"feature_names": list(wine.feature_names)}, indent=2) + "\n"
    )
    print(
        f"wine: random forest, {forest.n_estimators} trees, held-out accuracy "
        f"{accuracy:.3f} on {len(y_test)} rows -> {args.out / 'model.onnx'}"
    )
    print("  first held-out row:", ",".join(f"{v:g}" for v in x_test[0]), "->", y_test[0])


if __name__ == "__main__":
    main()
