"""An independent reference for sentence embeddings: a BERT encoder written out in numpy
from its `config.json`, `model.safetensors` and `tokenizer.json` (Hugging Face's
`tokenizers`, truncating at the folder's `max_seq_length`), mean-pooled and L2-normalised
as the folder's sentence-transformers files say. It shares no code with the worker (which
runs its own Rust encoder), so agreement is evidence both compute the model.

Used by the stack test (`openai_client_test.py`); runs alone too:
    python tools/python/embedding_reference.py models/minilm "a text" "another"
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file
from tokenizers import Tokenizer

_erf = np.vectorize(math.erf)


def layer_norm(x, w, b, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * w + b


class Encoder:
    def __init__(self, folder: str | Path):
        folder = Path(folder)
        self.config = json.loads((folder / "config.json").read_text())
        raw = load_file(str(folder / "model.safetensors"))
        self.w = {k.removeprefix("bert."): v.astype(np.float64) for k, v in raw.items()}
        modules = json.loads((folder / "modules.json").read_text())
        pooling_dir = next(m["path"] for m in modules if m["type"].endswith("Pooling"))
        pooling = json.loads((folder / pooling_dir / "config.json").read_text())
        if not pooling.get("pooling_mode_mean_tokens"):
            raise SystemExit("this reference computes mean pooling only")
        self.normalize = any(m["type"].endswith("Normalize") for m in modules)
        window = self.config["max_position_embeddings"]
        sbert = folder / "sentence_bert_config.json"
        if sbert.is_file():
            window = min(window, json.loads(sbert.read_text()).get("max_seq_length", window))
        self.tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(window)

    def linear(self, x, name):
        return x @ self.w[f"{name}.weight"].T + self.w[f"{name}.bias"]

    def norm(self, x, name):
        return layer_norm(x, self.w[f"{name}.weight"], self.w[f"{name}.bias"], self.config["layer_norm_eps"])

    def embed(self, text: str) -> np.ndarray:
        ids = self.tokenizer.encode(text).ids
        t = len(ids)
        x = (
            self.w["embeddings.word_embeddings.weight"][ids]
            + self.w["embeddings.position_embeddings.weight"][:t]
            + self.w["embeddings.token_type_embeddings.weight"][0]
        )
        x = self.norm(x, "embeddings.LayerNorm")
        heads = self.config["num_attention_heads"]
        d = x.shape[1] // heads
        for i in range(self.config["num_hidden_layers"]):
            p = f"encoder.layer.{i}"
            split = lambda y: y.reshape(t, heads, d).transpose(1, 0, 2)
            q = split(self.linear(x, f"{p}.attention.self.query"))
            k = split(self.linear(x, f"{p}.attention.self.key"))
            v = split(self.linear(x, f"{p}.attention.self.value"))
            scores = q @ k.transpose(0, 2, 1) / math.sqrt(d)
            scores = np.exp(scores - scores.max(-1, keepdims=True))
            probs = scores / scores.sum(-1, keepdims=True)
            context = (probs @ v).transpose(1, 0, 2).reshape(t, heads * d)
            x = self.norm(x + self.linear(context, f"{p}.attention.output.dense"), f"{p}.attention.output.LayerNorm")
            inner = self.linear(x, f"{p}.intermediate.dense")
            inner = 0.5 * inner * (1.0 + _erf(inner / math.sqrt(2.0)))
            x = self.norm(x + self.linear(inner, f"{p}.output.dense"), f"{p}.output.LayerNorm")
        v = x.mean(0)
        if self.normalize:
            v = v / max(np.linalg.norm(v), 1e-12)
        return v


if __name__ == "__main__":
    encoder = Encoder(sys.argv[1])
    for text in sys.argv[2:]:
        print(json.dumps({"text": text, "embedding": encoder.embed(text).round(6).tolist()}))
