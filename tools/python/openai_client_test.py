"""OpenAI's own Python client against the local stack's embeddings route: one text and a
list, base64 (the client's default) and float, vectors checked against an independent numpy
encoder reading the same files (cosine >= 0.9999); an unknown model and a token without the
model's scope raise the client's usual exceptions. Reads IHUB_OPENAI_BASE_URL, IHUB_TOKEN and
IHUB_OTHER_MODEL_TOKEN (a token limited to another model). Prints one line per check; exits
1 when any fails."""
import os
import sys

import numpy as np
import openai

from embedding_reference import Encoder

BASE_URL = os.environ["IHUB_OPENAI_BASE_URL"]
client = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["IHUB_TOKEN"], max_retries=0, timeout=60)
reference = Encoder(os.environ.get("IHUB_MINILM_DIR", "models/minilm"))
TEXTS = [
    "The support team fixed it in minutes, thank you!",
    "How do I reset my password?",
    "Semantic search finds documents by meaning, not by keywords.",
]
failed = 0


def check(name, fn):
    global failed
    try:
        fn()
        print(f"ok   {name}")
    except Exception as e:  # every failure is reported, then the next check runs
        failed += 1
        print(f"FAIL {name}: {type(e).__name__}: {e}")


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def one_text_base64():
    r = client.embeddings.create(model="minilm", input=TEXTS[0])
    assert r.object == "list" and r.model == "minilm" and len(r.data) == 1, r
    v = r.data[0].embedding
    assert len(v) == 384, len(v)
    c = cosine(v, reference.embed(TEXTS[0]))
    assert c >= 0.9999, c
    assert r.usage.prompt_tokens == len(reference.tokenizer.encode(TEXTS[0]).ids), r.usage


def a_list_float():
    r = client.embeddings.create(model="minilm", input=TEXTS, encoding_format="float")
    assert [d.index for d in r.data] == [0, 1, 2], r.data
    for text, d in zip(TEXTS, r.data):
        c = cosine(d.embedding, reference.embed(text))
        assert c >= 0.9999, (text, c)


def dimensions():
    r = client.embeddings.create(model="minilm", input=TEXTS[1], dimensions=64, encoding_format="float")
    v = np.asarray(r.data[0].embedding)
    assert v.shape == (64,) and abs(np.linalg.norm(v) - 1.0) < 1e-4, v.shape


def unknown_model():
    try:
        client.embeddings.create(model="no-such-model", input="x")
        raise AssertionError("an unknown model was answered")
    except openai.NotFoundError as e:
        assert e.status_code == 404 and e.param == "model", (e.status_code, e.body)


def token_without_the_models_scope():
    other = openai.OpenAI(base_url=BASE_URL, api_key=os.environ["IHUB_OTHER_MODEL_TOKEN"], max_retries=0, timeout=60)
    try:
        other.embeddings.create(model="minilm", input="x")
        raise AssertionError("a token limited to another model was answered")
    except openai.PermissionDeniedError as e:
        assert e.status_code == 403 and e.type == "permission_error", (e.status_code, e.body)


def not_an_embedding_model():
    try:
        client.embeddings.create(model="sentiment", input="x")
        raise AssertionError("a classifier answered an embeddings request")
    except openai.BadRequestError as e:
        assert e.param == "model", e.body


check("one text, base64 (the client's default), vs the numpy reference", one_text_base64)
check("a list of three texts, float, vs the numpy reference", a_list_float)
check("dimensions=64: cut and normalised again", dimensions)
check("an unknown model raises NotFoundError", unknown_model)
check("a token limited to another model raises PermissionDeniedError", token_without_the_models_scope)
check("a classifier raises BadRequestError naming `model`", not_an_embedding_model)
sys.exit(1 if failed else 0)
