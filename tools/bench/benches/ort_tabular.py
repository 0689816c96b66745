"""ONNX Runtime side of `make bench-tabular`: serves one `.onnx` file over stdin/stdout.

    {"cmd": "predict", "rows": [[...], ...]}          -> {"probabilities": [[...], ...]}
    {"cmd": "time", "rows": [[...], ...], "reps": N}  -> {"seconds": total}

The session runs the file exactly as exported (ZipMap included, as a user of ONNX Runtime
gets it), with `--threads` intra-op threads and every graph optimisation on.
"""

import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    options = ort.SessionOptions()
    options.intra_op_num_threads = args.threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(args.model, options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    print(json.dumps({"ready": True, "onnxruntime": ort.__version__}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        rows = np.asarray(request.get("rows", []), dtype=np.float32)
        if request["cmd"] == "predict":
            # The probability output: a list of {label: p} maps after ZipMap.
            out = session.run(outputs, {name: rows})[-1]
            if isinstance(out, list):
                out = [list(d.values()) for d in out]
            print(json.dumps({"probabilities": np.asarray(out).tolist()}), flush=True)
        elif request["cmd"] == "time":
            started = time.perf_counter()
            for _ in range(request["reps"]):
                session.run(outputs, {name: rows})
            print(json.dumps({"seconds": time.perf_counter() - started}), flush=True)
        else:
            break


if __name__ == "__main__":
    main()
