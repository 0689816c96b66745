"""ONNX Runtime side of `make bench-worker`.

Builds an ONNX graph of a BERT sentence encoder (mean pooling, L2 normalisation) straight
from the model folder's `config.json` and `model.safetensors` with `onnx.helper` (no torch),
then answers the Rust benchmark over stdin/stdout, one JSON object per line:

    {"cmd": "embed", "ids": [[101, ...], ...]}        -> {"embedding": [[...], ...]}
    {"cmd": "time", "ids": [[...], ...], "reps": N}   -> {"seconds": total}

A batch is padded to its longest input with an attention mask, as a user of ONNX Runtime
would feed it. The session runs with `--threads` intra-op threads and every graph
optimisation on (ONNX Runtime fuses attention, LayerNorm and GELU itself).
"""

import argparse
import json
import struct
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper


def read_safetensors(path):
    with open(path, "rb") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        data = f.read()
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        array = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]])
        out[name] = array.reshape(info["shape"]).astype(np.float32)
    return out


def build(model_dir):
    config = json.load(open(f"{model_dir}/config.json"))
    weights = read_safetensors(f"{model_dir}/model.safetensors")
    prefix = "" if "embeddings.word_embeddings.weight" in weights else "bert."
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    d = hidden // heads
    eps = config.get("layer_norm_eps", 1e-12)
    nodes, inits = [], []
    counter = [0]

    def name(base):
        counter[0] += 1
        return f"{base}_{counter[0]}"

    def const(array, base="c"):
        n = name(base)
        inits.append(numpy_helper.from_array(np.asarray(array), n))
        return n

    def op(kind, inputs, **attrs):
        out = name(kind.lower())
        nodes.append(helper.make_node(kind, inputs, [out], **attrs))
        return out

    def w(key):
        return weights[prefix + key]

    def linear(x, key):
        return op("Add", [op("MatMul", [x, const(w(key + ".weight").T.copy())]), const(w(key + ".bias"))])

    def layer_norm(x, key):
        return op("LayerNormalization", [x, const(w(key + ".weight")), const(w(key + ".bias"))], axis=-1, epsilon=eps)

    ids, mask = "input_ids", "attention_mask"
    word = op("Gather", [const(w("embeddings.word_embeddings.weight")), ids])
    length = op("Gather", [op("Shape", [ids]), const(np.array(1, dtype=np.int64))])
    positions = op("Range", [const(np.array(0, dtype=np.int64)), length, const(np.array(1, dtype=np.int64))])
    pos = op("Gather", [const(w("embeddings.position_embeddings.weight")), positions])
    token_type = const(w("embeddings.token_type_embeddings.weight")[0])
    x = layer_norm(op("Add", [op("Add", [word, pos]), token_type]), "embeddings.LayerNorm")
    # Additive mask [B, 1, 1, L]: 0 on tokens, -10000 on padding.
    bias = op("Mul", [op("Sub", [const(np.array(1.0, dtype=np.float32)), mask]), const(np.array(-10000.0, dtype=np.float32))])
    bias = op("Unsqueeze", [bias, const(np.array([1, 2], dtype=np.int64))])
    split = const(np.array([0, 0, heads, d], dtype=np.int64))
    merge = const(np.array([0, 0, hidden], dtype=np.int64))
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}"
        q = op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.query"), split])], perm=[0, 2, 1, 3])
        k = op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.key"), split])], perm=[0, 2, 3, 1])
        v = op("Transpose", [op("Reshape", [linear(x, f"{p}.attention.self.value"), split])], perm=[0, 2, 1, 3])
        scores = op("Add", [op("Mul", [op("MatMul", [q, k]), const(np.array(1.0 / np.sqrt(d), dtype=np.float32))]), bias])
        context = op("MatMul", [op("Softmax", [scores], axis=-1), v])
        context = op("Reshape", [op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        x = layer_norm(op("Add", [linear(context, f"{p}.attention.output.dense"), x]), f"{p}.attention.output.LayerNorm")
        inner = linear(x, f"{p}.intermediate.dense")
        erf = op("Erf", [op("Mul", [inner, const(np.array(1 / np.sqrt(2), dtype=np.float32))])])
        gelu = op("Mul", [op("Mul", [inner, const(np.array(0.5, dtype=np.float32))]), op("Add", [erf, const(np.array(1.0, dtype=np.float32))])])
        x = layer_norm(op("Add", [linear(gelu, f"{p}.output.dense"), x]), f"{p}.output.LayerNorm")
    # Mean over real tokens, then L2 normalisation.
    m = op("Unsqueeze", [mask, const(np.array([2], dtype=np.int64))])
    summed = op("ReduceSum", [op("Mul", [x, m]), const(np.array([1], dtype=np.int64))], keepdims=0)
    counts = op("ReduceSum", [m, const(np.array([1], dtype=np.int64))], keepdims=0)
    mean = op("Div", [summed, counts])
    norm = op("Sqrt", [op("ReduceSum", [op("Mul", [mean, mean]), const(np.array([1], dtype=np.int64))], keepdims=1)])
    norm = op("Max", [norm, const(np.array(1e-12, dtype=np.float32))])
    nodes.append(helper.make_node("Div", [mean, norm], ["embedding"]))
    graph = helper.make_graph(
        nodes,
        "bert_sentence_encoder",
        [
            helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "length"]),
            helper.make_tensor_value_info(mask, TensorProto.FLOAT, ["batch", "length"]),
        ],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", hidden])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def feeds(ids):
    longest = max(len(row) for row in ids)
    input_ids = np.zeros((len(ids), longest), dtype=np.int64)
    mask = np.zeros((len(ids), longest), dtype=np.float32)
    for i, row in enumerate(ids):
        input_ids[i, : len(row)] = row
        mask[i, : len(row)] = 1.0
    return {"input_ids": input_ids, "attention_mask": mask}


def cpu_features():
    try:
        from numpy._core._multiarray_umath import __cpu_features__
    except ImportError:  # numpy before 2.0
        from numpy.core._multiarray_umath import __cpu_features__
    return __cpu_features__


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model-dir", required=True)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    model = build(args.model_dir)
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    ready = {"ready": True, "onnxruntime": ort.__version__, "nodes": len(model.graph.node)}
    # What CPUID told this process (numpy asks it as ONNX Runtime's kernels do): the bench
    # checks that AVX-512 is hidden when it means to run ONNX Runtime's AVX2 path.
    ready["avx512f"] = bool(cpu_features().get("AVX512F", False))
    print(json.dumps(ready), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "embed":
            out = session.run(["embedding"], feeds(request["ids"]))[0]
            print(json.dumps({"embedding": out.tolist()}), flush=True)
        elif request["cmd"] == "time":
            batch = feeds(request["ids"])
            started = time.perf_counter()
            for _ in range(request["reps"]):
                session.run(["embedding"], batch)
            print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
        else:
            break


if __name__ == "__main__":
    main()
