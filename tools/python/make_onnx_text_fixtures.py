"""Writes a transformer exported to ONNX, as people serve text classifiers with ONNX Runtime.

A tiny, randomly initialised `BertForSequenceClassification` (transformers), exported by
PyTorch's exporter (`torch.onnx.export`, inputs `input_ids`, `attention_mask`,
`token_type_ids`, dynamic batch and sequence axes), saved beside its `tokenizer.json` and
`config.json` (`id2label`): folder `bert-onnx`. Its int8 copy, quantised by ONNX Runtime's
own `quantize_dynamic`, is `bert-onnx-int8`.

`expected.json` in each: the prompts, the token ids the tokenizer gives, and logits for each
prompt alone -- transformers' own (fp32, eval mode) for the export; for the int8 copy ONNX
Runtime's on the quantised graph (the quantiser's result is what a user serves), with
transformers' fp32 logits beside them to show what quantising cost. Run `make fixtures`.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import transformers
from onnxruntime.quantization import QuantType, quantize_dynamic

sys.path.insert(0, str(Path(__file__).parent))
from make_hf_fixtures import LABELS, transformers_cases, wordpiece  # noqa: E402

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]


def export(model, out: Path) -> None:
    """`model` (a `*ForSequenceClassification`) through `torch.onnx.export` to `out`:
    inputs `input_ids`, `attention_mask`, `token_type_ids`, output `logits`, batch and
    sequence dynamic."""
    ids = torch.tensor([[2, 10, 11, 3], [2, 12, 3, 0]])
    mask = (ids != 0).long()
    axes = {"batch": 0, "sequence": 1}
    buffer = io.BytesIO()
    torch.onnx.export(
        model,
        (ids, mask, torch.zeros_like(ids)),
        buffer,
        input_names=INPUTS,
        output_names=["logits"],
        dynamic_axes={
            **{name: {v: k for k, v in axes.items()} for name in INPUTS},
            "logits": {0: "batch"},
        },
        opset_version=17,
        dynamo=False,
    )
    out.write_bytes(buffer.getvalue())


def ort_logits(path: Path, ids: list[int]) -> list[float]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {
        "input_ids": np.array([ids], dtype=np.int64),
        "attention_mask": np.ones((1, len(ids)), dtype=np.int64),
        "token_type_ids": np.zeros((1, len(ids)), dtype=np.int64),
    }
    names = {i.name for i in session.get_inputs()}
    return session.run(["logits"], {k: v for k, v in feed.items() if k in names})[0][0].tolist()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    print(
        f"transformers {transformers.__version__}, torch {torch.__version__}, "
        f"onnxruntime {ort.__version__}",
        flush=True,
    )
    tok = wordpiece("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
    torch.manual_seed(4)
    model = transformers.BertForSequenceClassification(
        transformers.BertConfig(
            vocab_size=tok.get_vocab_size(),
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            type_vocab_size=2,
            pad_token_id=tok.token_to_id("[PAD]"),
            initializer_range=0.3,
            id2label=LABELS,
            label2id={v: k for k, v in LABELS.items()},
        )
    ).eval()
    model.config.architectures = ["BertForSequenceClassification"]

    fp32 = args.out / "bert-onnx"
    int8 = args.out / "bert-onnx-int8"
    for folder in (fp32, int8):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        model.config.to_json_file(folder / "config.json")
        tok.save(str(folder / "tokenizer.json"))
    export(model, fp32 / "model.onnx")
    quantize_dynamic(fp32 / "model.onnx", int8 / "model.onnx", weight_type=QuantType.QInt8)

    cases = transformers_cases(model, tok)
    meta = {
        "architecture": "BertForSequenceClassification",
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "onnxruntime": ort.__version__,
    }
    (fp32 / "expected.json").write_text(
        json.dumps({**meta, "logits_from": "transformers", "cases": cases}, indent=1) + "\n"
    )
    int8_cases = []
    worst = 0.0
    for case in cases:
        got = ort_logits(int8 / "model.onnx", case["input_ids"])
        worst = max(worst, max(abs(a - b) for a, b in zip(got, case["logits"])))
        int8_cases.append({**case, "logits": got, "fp32_logits": case["logits"]})
    (int8 / "expected.json").write_text(
        json.dumps(
            {**meta, "logits_from": "onnxruntime (int8 graph)", "cases": int8_cases}, indent=1
        )
        + "\n"
    )
    for folder in (fp32, int8):
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"  {folder.name}: {size / 1024:.0f} KiB", flush=True)
    print(f"  int8 logits differ from fp32 by up to {worst:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
