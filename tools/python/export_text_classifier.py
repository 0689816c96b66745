"""Makes the transformer-export benchmark's two folders from one set of weights.

MiniLM-L6 (the demo encoder, `--encoder-dir`) as a `BertForSequenceClassification` with a
fixed random 2-label head (seed 0), written twice: as the Hugging Face checkpoint the
worker's own encoder serves (`OUT/hf`: `save_pretrained` + `tokenizer.json`), and exported
by PyTorch's `torch.onnx.export` (`OUT/onnx`: `model.onnx` with dynamic batch and sequence
axes, the same `tokenizer.json` and `config.json`). `make bench-onnx-text` runs it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from make_onnx_text_fixtures import export  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification.from_pretrained(
        args.encoder_dir,
        num_labels=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    ).eval()
    model.config.architectures = ["BertForSequenceClassification"]
    hf, onnx = args.out / "hf", args.out / "onnx"
    for folder in (hf, onnx):
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        shutil.copy(args.encoder_dir / "tokenizer.json", folder / "tokenizer.json")
    model.save_pretrained(hf, safe_serialization=True)
    model.config.to_json_file(onnx / "config.json")
    export(model, onnx / "model.onnx")
    for folder in (hf, onnx):
        size = sum(f.stat().st_size for f in folder.iterdir())
        print(f"{folder}: {size / 1e6:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
