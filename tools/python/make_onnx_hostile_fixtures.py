"""Writes tree-ensemble ONNX files that must not load: model files are input too.

Each folder holds `model.onnx`, built with ONNX's own helpers, and `expected.json`:
`{"refused": true, "reason": "<words the load error must contain>"}` for a hostile file, or
`{"refused": false, "inputs": [...], "labels": [...]}` (labels from ONNX Runtime's Python
API) for the controls beside them.

- `self-loop`: a branch whose true child is itself.
- `back-edge`: node 0's false child is node 1, whose true child is node 0 again.
- `orphan-cycle`: a tree whose every node has a parent (two branches pointing at each
  other), so it has no root at all.
- `too-deep`: a chain of 1,025 branches, one past the worker's limit. ONNX Runtime builds
  its trees recursively, and with 1.31 a chain of 2,048 branches overflows a 2 MiB thread
  stack while loading (a crash of the whole process, not an error).
- `missing-feature`: a branch reading feature 9 of a 4-feature input.
- `negative-feature`: a branch reading feature -3.
- `dangling-child`: a branch whose true child is node 7 of a 3-node tree.
- `negative-dimension`: a stump whose input declares `[N, -4]`.
- `v5-back-edge`: the same back edge in opset 5's `TreeEnsemble`, whose nodes and leaves
  live in separate lists.
- controls: `control-small` (a two-leaf stump) and `control-at-limit` (a chain exactly at
  the 1,024-branch depth limit) load and answer.
- `spin`: a model that loads and answers an input of zeros at once, but whose `Loop` runs
  a trillion steps when the input holds a 1 (trip count = max(input) x 1e12): a forward
  pass that does not come back, for the worker's `--forward-deadline`.

The worker's tests need no Python; `make fixtures` regenerates these.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

FEATURES = 4
MAX_DEPTH = 1024


def tree_classifier(true_ids, false_ids, features, modes, leaves):
    """A one-tree `TreeEnsembleClassifier` (ai.onnx.ml opset 3) over `[N, 4]` floats:
    node i has `true_ids[i]`, `false_ids[i]`, `features[i]` and mode `modes[i]`; each id in
    `leaves` is a leaf voting for its own class."""
    n = len(modes)
    node = helper.make_node(
        "TreeEnsembleClassifier",
        ["X"],
        ["label", "probabilities"],
        domain="ai.onnx.ml",
        nodes_treeids=[0] * n,
        nodes_nodeids=list(range(n)),
        nodes_featureids=features,
        nodes_modes=modes,
        nodes_values=[0.5] * n,
        nodes_truenodeids=true_ids,
        nodes_falsenodeids=false_ids,
        class_treeids=[0] * len(leaves),
        class_nodeids=leaves,
        class_ids=list(range(len(leaves))),
        class_weights=[1.0] * len(leaves),
        classlabels_int64s=list(range(len(leaves))),
        post_transform="NONE",
    )
    return graph_model(node, [
        helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
        helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [None, len(leaves)]),
    ], ml_opset=3)


def graph_model(node, outputs, ml_opset):
    graph = helper.make_graph(
        [node],
        "tree",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, FEATURES])],
        outputs,
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", ml_opset)],
        producer_name="inferencehub-hostile-fixtures",
    )
    model.ir_version = 9
    return model


def chain(depth):
    """`depth` branches, each false child the next branch, every true child the one leaf."""
    leaf = depth
    modes = ["BRANCH_LEQ"] * depth + ["LEAF"]
    return tree_classifier(
        [leaf] * depth + [0],
        [i + 1 for i in range(depth)] + [0],
        [0] * (depth + 1),
        modes,
        [leaf],
    )


def stump(feature=0, true_id=1):
    return tree_classifier(
        [true_id, 0, 0], [2, 0, 0], [feature, 0, 0], ["BRANCH_LEQ", "LEAF", "LEAF"], [1, 2]
    )


def negative_dimension():
    model = stump()
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = -4
    return model


def v5_back_edge():
    """Opset 5 `TreeEnsemble`: nodes 0 and 1 are branches (leaves are a separate list);
    node 0's false child is node 1 and node 1's true child is node 0."""
    node = helper.make_node(
        "TreeEnsemble",
        ["X"],
        ["Y"],
        domain="ai.onnx.ml",
        tree_roots=[0],
        nodes_featureids=[0, 1],
        nodes_modes=helper.make_tensor("modes", TensorProto.UINT8, [2], [0, 0]),
        nodes_splits=helper.make_tensor("splits", TensorProto.FLOAT, [2], [0.5, 0.5]),
        nodes_truenodeids=[0, 0],
        nodes_trueleafs=[1, 0],
        nodes_falsenodeids=[1, 0],
        nodes_falseleafs=[0, 1],
        leaf_targetids=[0],
        leaf_weights=helper.make_tensor("weights", TensorProto.FLOAT, [1], [1.0]),
        n_targets=1,
        aggregate_function=1,
        post_transform=0,
    )
    return graph_model(
        node, [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])], ml_opset=5
    )


HOSTILE = {
    "self-loop": (
        tree_classifier([0, 0, 0], [2, 0, 0], [0, 0, 0], ["BRANCH_LEQ", "LEAF", "LEAF"], [1, 2]),
        "cycle",
    ),
    "back-edge": (
        tree_classifier([2, 0, 0], [1, 2, 0], [0, 1, 0], ["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"], [2]),
        "cycle",
    ),
    "orphan-cycle": (
        tree_classifier([1, 0], [1, 0], [0, 0], ["BRANCH_LEQ", "BRANCH_LEQ"], [1]),
        "no root",
    ),
    "too-deep": (chain(MAX_DEPTH + 1), "deeper than"),
    "missing-feature": (stump(feature=9), "feature 9"),
    "negative-feature": (stump(feature=-3), "feature -3"),
    "dangling-child": (stump(true_id=7), "node 7"),
    "negative-dimension": (negative_dimension(), "dimension -4"),
    "v5-back-edge": (v5_back_edge(), "cycle"),
}

def spin():
    """`Y = X` after `max(X) * 1e12` iterations of an identity `Loop`."""
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["v_in"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    nodes = [
        helper.make_node("ReduceMax", ["X"], ["largest"], keepdims=0),
        helper.make_node("Mul", ["largest", "trillion"], ["steps"]),
        helper.make_node("Cast", ["steps"], ["M"], to=TensorProto.INT64),
        helper.make_node("Loop", ["M", "true", "X"], ["Y"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "spin",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 1])],
        initializer=[
            helper.make_tensor("trillion", TensorProto.FLOAT, [], [1e12]),
            helper.make_tensor("true", TensorProto.BOOL, [], [True]),
        ],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="inferencehub-hostile-fixtures"
    )
    model.ir_version = 9
    onnx.checker.check_model(model)
    return model


CONTROLS = {"control-small": stump(), "control-at-limit": chain(MAX_DEPTH)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    for name, (model, reason) in HOSTILE.items():
        folder = args.out / name
        folder.mkdir(parents=True)
        onnx.save(model, folder / "model.onnx")
        (folder / "expected.json").write_text(json.dumps({"refused": True, "reason": reason}) + "\n")
        print(f"{name}: refused ({reason})")
    import onnxruntime as ort

    rows = np.array([[0.1, 0.9, 0.3, 0.4], [0.9, 0.1, 0.3, 0.4]], dtype=np.float32)
    for name, model in CONTROLS.items():
        folder = args.out / name
        folder.mkdir(parents=True)
        onnx.save(model, folder / "model.onnx")
        session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
        labels = session.run(["label"], {"X": rows})[0]
        expected = {"refused": False, "inputs": rows.tolist(), "labels": [str(v) for v in labels]}
        (folder / "expected.json").write_text(json.dumps(expected) + "\n")
        print(f"{name}: labels {expected['labels']}")
    folder = args.out / "spin"
    folder.mkdir(parents=True)
    onnx.save(spin(), folder / "model.onnx")
    zeros = [[0.0], [0.0]]
    (folder / "expected.json").write_text(
        json.dumps({"refused": False, "inputs": zeros, "labels": [], "spins_on": [[1.0]]}) + "\n"
    )
    print("spin: answers zeros, loops on a 1")


if __name__ == "__main__":
    main()
