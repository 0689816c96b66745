"""Writes tiny, randomly initialised Hugging Face text classifiers and their logits.

Each fixture is a folder exactly as transformers saves it (`config.json`,
`model.safetensors`) plus a `tokenizer.json` trained here on a few sentences, and
`expected.json`: prompts, the token ids the tokenizer gives, and the logits transformers
computes for each prompt alone (fp32, eval mode). The worker's tests load the folders
unchanged and must agree within 1e-4. Run `make fixtures` to regenerate.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

CORPUS = [
    "the cat sat on the mat",
    "a good movie with a bad ending",
    "hello world, this is a test of the tokenizer",
    "support fixed it in minutes, thank you so much",
    "terrible service and it broke on day one",
    "I love it, works perfectly",
    "what a great day",
    "the quick brown fox jumps over the lazy dog",
]
PROMPTS = [
    "the cat sat on the mat",
    "a good movie",
    "terrible service, it broke on day one and nobody answered",
    "hello",
    "I love it, works perfectly. What a great day with the quick brown fox!",
]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def wordpiece(cls: str, sep: str, pad: str, unk: str, mask: str) -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token=unk))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=120, special_tokens=[pad, unk, cls, sep, mask], min_frequency=1
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}",
        pair=f"{cls} $A {sep} $B:1 {sep}:1",
        special_tokens=[(cls, tok.token_to_id(cls)), (sep, tok.token_to_id(sep))],
    )
    tok.decoder = decoders.WordPiece()
    return tok


def byte_bpe() -> Tokenizer:
    """RoBERTa's layout: byte-level BPE, <s> ... </s>, <pad> = 1."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>"))
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def transformers_cases(model, tok: Tokenizer) -> list[dict]:
    """Each of PROMPTS with the token ids `tok` gives and the logits `model` computes for
    it alone (eval mode, no gradients)."""
    cases = []
    with torch.no_grad():
        for prompt in PROMPTS:
            ids = tok.encode(prompt).ids
            logits = model(input_ids=torch.tensor([ids])).logits[0]
            cases.append({"prompt": prompt, "input_ids": ids, "logits": logits.tolist()})
    return cases


def write(out: Path, name: str, model, tok: Tokenizer) -> None:
    folder = out / name
    if folder.exists():
        shutil.rmtree(folder)
    model.eval()
    model.save_pretrained(folder, safe_serialization=True)
    tok.save(str(folder / "tokenizer.json"))
    cases = transformers_cases(model, tok)
    expected = {
        "architecture": model.config.architectures[0],
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "cases": cases,
    }
    (folder / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    size = sum(f.stat().st_size for f in folder.iterdir())
    print(f"  {name}: {model.config.architectures[0]}, {size / 1024:.0f} KiB", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    transformers.utils.logging.disable_progress_bar()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}", flush=True)
    common = dict(id2label=LABELS, label2id={v: k for k, v in LABELS.items()})

    bert_tok = wordpiece("[CLS]", "[SEP]", "[PAD]", "[UNK]", "[MASK]")
    torch.manual_seed(1)
    distil = transformers.DistilBertForSequenceClassification(
        transformers.DistilBertConfig(
            vocab_size=bert_tok.get_vocab_size(),
            dim=16,
            n_layers=2,
            n_heads=2,
            hidden_dim=32,
            max_position_embeddings=64,
            pad_token_id=bert_tok.token_to_id("[PAD]"),
            initializer_range=0.3,
            **common,
        )
    )
    write(args.out, "distilbert", distil, bert_tok)

    bpe = byte_bpe()
    for name, cls, config_cls in [
        ("roberta", transformers.RobertaForSequenceClassification, transformers.RobertaConfig),
        (
            "xlm-roberta",
            transformers.XLMRobertaForSequenceClassification,
            transformers.XLMRobertaConfig,
        ),
    ]:
        torch.manual_seed(2)
        model = cls(
            config_cls(
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
                **common,
            )
        )
        write(args.out, name, model, bpe)

    torch.manual_seed(3)
    modern = transformers.ModernBertForSequenceClassification(
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
            classifier_pooling="mean",
            **common,
        )
    )
    write(args.out, "modernbert", modern, bert_tok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
