"""Exports a sentence encoder to ONNX for the embeddings benchmark (`make bench-embeddings`).

MiniLM-L6 (the demo encoder, `--encoder-dir`, in the sentence-transformers layout) loaded by
transformers as a `BertModel` and exported by PyTorch's `torch.onnx.export` with its token
states as the output (dynamic batch and sequence axes), beside the same `tokenizer.json`,
`config.json`, `modules.json`, `1_Pooling/config.json` and `sentence_bert_config.json`
(`OUT/`): the worker serves it as an embedding model pooled by its own code, on ONNX Runtime,
while `models/minilm` runs the same weights on the worker's own encoder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import transformers

sys.path.insert(0, str(Path(__file__).parent))
from make_embedding_fixtures import export_onnx  # noqa: E402
from tokenizers import Tokenizer  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder-dir", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    transformers.utils.logging.disable_progress_bar()
    model = transformers.BertModel.from_pretrained(args.encoder_dir, add_pooling_layer=False).eval()
    tok = Tokenizer.from_file(str(args.encoder_dir / "tokenizer.json"))
    export_onnx(args.encoder_dir, args.out.parent, args.out.name, model, tok)
    size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {size / 1e6:.1f} MB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
