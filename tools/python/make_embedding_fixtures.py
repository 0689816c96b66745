"""Writes tiny, randomly initialised sentence-embedding checkpoints and their vectors.

Each fixture is a folder in the sentence-transformers layout, as `SentenceTransformer.save`
writes it: the encoder as transformers saves it (`config.json`, `model.safetensors`), a
`tokenizer.json` trained here, `modules.json` (Transformer, Pooling, optionally Normalize)
and `1_Pooling/config.json` with the pooling mode. `expected.json` holds prompts, their
token ids, and the vector of each: transformers' own last hidden states (fp32, eval mode,
each prompt alone) pooled as sentence-transformers' Pooling module does (mean over real
tokens, the first token, or the element-wise max over real tokens), then L2-normalised when
the folder has a Normalize module. `bert-mean-onnx` is the `bert-mean` encoder exported by
`torch.onnx.export` (token states out), pooled per the same folder files.

The worker's tests load the folders unchanged and must agree within 1e-4. Run
`make fixtures` to regenerate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import transformers

sys.path.insert(0, str(Path(__file__).parent))
from make_hf_fixtures import PROMPTS, byte_bpe, wordpiece  # noqa: E402

MODES = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
}


def pool(states: np.ndarray, mode: str, normalize: bool) -> np.ndarray:
    """`states` [tokens, hidden] of one prompt (no padding) as one vector."""
    if mode == "mean":
        v = states.mean(axis=0)
    elif mode == "cls":
        v = states[0]
    else:
        v = states.max(axis=0)
    if normalize:
        v = v / max(np.linalg.norm(v), 1e-12)
    return v


def write_layout(folder: Path, mode: str, normalize: bool, hidden: int) -> None:
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    if normalize:
        modules.append(
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}
        )
    (folder / "modules.json").write_text(json.dumps(modules, indent=2) + "\n")
    (folder / "1_Pooling").mkdir(exist_ok=True)
    pooling = {"word_embedding_dimension": hidden}
    for m, key in MODES.items():
        pooling[key] = m == mode
    pooling["pooling_mode_mean_sqrt_len_tokens"] = False
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2) + "\n")
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48}) + "\n")


def cases(model, tok, mode: str, normalize: bool) -> list[dict]:
    out = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tok.encode(prompt).ids
            states = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
            vector = pool(states.astype(np.float64), mode, normalize)
            out.append({"prompt": prompt, "input_ids": ids, "embedding": vector.tolist()})
    return out


def write(out: Path, name: str, model, tok, mode: str, normalize: bool) -> Path:
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    write_layout(folder, mode, normalize, model.config.hidden_size)
    expected = {
        "pooling": mode,
        "normalize": normalize,
        "transformers": transformers.__version__,
        "cases": cases(model, tok, mode, normalize),
    }
    (folder / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(f"  {name}: {model.config.architectures[0]}, {mode} pooling, normalize={normalize}", flush=True)
    return folder


def export_onnx(source: Path, out: Path, name: str, model, tok) -> None:
    """`model` exported with its token states as the output, beside the source's files."""
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    for f in ["tokenizer.json", "config.json", "modules.json", "sentence_bert_config.json", "expected.json"]:
        if (source / f).is_file():
            shutil.copy(source / f, folder / f)
    shutil.copytree(source / "1_Pooling", folder / "1_Pooling")
    class TokenStates(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
            ).last_hidden_state

    ids = torch.tensor([tok.encode(PROMPTS[0]).ids])
    mask = torch.ones_like(ids)
    types = torch.zeros_like(ids)
    dynamic = {0: "batch", 1: "sequence"}
    torch.onnx.export(
        TokenStates(model),
        (ids, mask, types),
        str(folder / "model.onnx"),
        input_names=["input_ids", "attention_mask", "token_type_ids"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": dynamic, "attention_mask": dynamic, "token_type_ids": dynamic,
                      "last_hidden_state": dynamic},
        opset_version=17,
        dynamo=False,
    )
    print(f"  {name}: torch.onnx.export of {source.name}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    bert_tok = wordpiece("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
    for i, (mode, normalize) in enumerate([("mean", True), ("cls", False), ("max", False)]):
        torch.manual_seed(10 + i)
        model = transformers.BertModel(
            transformers.BertConfig(
                vocab_size=bert_tok.get_vocab_size(),
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                intermediate_size=32,
                max_position_embeddings=64,
                pad_token_id=bert_tok.token_to_id("[PAD]"),
                initializer_range=0.3,
            ),
            add_pooling_layer=False,
        )
        folder = write(args.out, f"bert-{mode}", model, bert_tok, mode, normalize)
        if mode == "mean":
            export_onnx(folder, args.out, "bert-mean-onnx", model, bert_tok)

    bpe = byte_bpe()
    torch.manual_seed(20)
    roberta = transformers.RobertaModel(
        transformers.RobertaConfig(
            vocab_size=bpe.get_vocab_size(),
            hidden_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64 + 2,
            type_vocab_size=1,
            pad_token_id=1,
            bos_token_id=0,
            eos_token_id=2,
            initializer_range=0.3,
        ),
        add_pooling_layer=False,
    )
    write(args.out, "roberta-mean", roberta, bpe, "mean", True)

    torch.manual_seed(30)
    modern = transformers.ModernBertModel(
        transformers.ModernBertConfig(
            vocab_size=bert_tok.get_vocab_size(),
            hidden_size=16,
            num_hidden_layers=3,
            num_attention_heads=2,
            intermediate_size=32,
            max_position_embeddings=64,
            global_attn_every_n_layers=3,
            local_attention=8,
            pad_token_id=bert_tok.token_to_id("[PAD]"),
            cls_token_id=bert_tok.token_to_id("[CLS]"),
            sep_token_id=bert_tok.token_to_id("[SEP]"),
            bos_token_id=bert_tok.token_to_id("[CLS]"),
            eos_token_id=bert_tok.token_to_id("[SEP]"),
            initializer_range=0.3,
        )
    )
    write(args.out, "modernbert-mean", modern, bert_tok, "mean", True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
