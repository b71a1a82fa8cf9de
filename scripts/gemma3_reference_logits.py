#!/usr/bin/env python3
"""Reference logits of Gemma 3 (270M GGUF) for tidings' own Gemma 3 decoder.

A plain NumPy forward pass over the GGUF tensors, dequantized to float32 with
the `gguf` package, following the published Gemma 3 architecture: embeddings
scaled by sqrt(hidden); RMSNorm before and after attention and MLP (the GGUF
converter already stored Gemma's `1 + weight`); per-head RMSNorm on queries
and keys; half-split rotary embeddings with base 10000 in sliding-window
layers and `gemma3.rope.freq_base` in every sixth (global) layer; causal
attention (sliding window `gemma3.attention.sliding_window` in local layers)
scaled by 1/sqrt(head_dim); GELU(tanh)-gated MLP; output tied to the
embeddings. Prints the top tokens and the first eight logits after the prompt,
as used by `real_gemma3_matches_numpy_reference` in tests/it/causal.rs.

    python3 -m pip install gguf numpy
    python3 scripts/gemma3_reference_logits.py path/to/gemma-3-270m-q4_k_m.gguf 2,818,5279,529,7001,563

The ids are `<bos>The capital of France is` (see
scripts/gemma_tokenizer_reference.py for the tokenizer). Takes about a minute.
"""
import sys

import gguf
import numpy as np
from gguf.quants import dequantize


def main(path, ids):
    r = gguf.GGUFReader(path)
    tensors = {t.name: t for t in r.tensors}

    def w(name):
        t = tensors[name]
        shape = [int(x) for x in reversed(t.shape.tolist())]
        return np.asarray(dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)

    def md(key, default=None):
        f = r.fields.get(key)
        return f.contents() if f is not None else default

    hidden = md("gemma3.embedding_length")
    heads = md("gemma3.attention.head_count")
    kv_heads = md("gemma3.attention.head_count_kv")
    hd = md("gemma3.attention.key_length")
    blocks = md("gemma3.block_count")
    eps = md("gemma3.attention.layer_norm_rms_epsilon")
    window = md("gemma3.attention.sliding_window")
    global_base = md("gemma3.rope.freq_base", 1e6)
    local_base = md("gemma3.rope.local_freq_base", 10000.0)

    def rms(x, weight):
        var = (x.astype(np.float64) ** 2).mean(-1, keepdims=True)
        return (x / np.sqrt(var + eps)).astype(np.float32) * weight

    def rope(x, base, pos):  # x: (heads, t, hd)
        half = hd // 2
        inv = 1.0 / base ** (np.arange(half) * 2 / hd)
        ang = pos[:, None] * inv[None, :]
        c, s = np.cos(ang), np.sin(ang)
        x1, x2 = x[..., :half], x[..., half:]
        return np.concatenate([x1 * c - x2 * s, x2 * c + x1 * s], -1)

    def gelu(x):
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))

    t = len(ids)
    pos = np.arange(t)
    emb = w("token_embd.weight")
    x = emb[ids] * np.sqrt(hidden)
    for i in range(blocks):
        p = f"blk.{i}."
        local = (i + 1) % 6 != 0
        h = rms(x, w(p + "attn_norm.weight"))
        q = (h @ w(p + "attn_q.weight").T).reshape(t, heads, hd).transpose(1, 0, 2)
        k = (h @ w(p + "attn_k.weight").T).reshape(t, kv_heads, hd).transpose(1, 0, 2)
        v = (h @ w(p + "attn_v.weight").T).reshape(t, kv_heads, hd).transpose(1, 0, 2)
        q = rms(q, w(p + "attn_q_norm.weight"))
        k = rms(k, w(p + "attn_k_norm.weight"))
        base = local_base if local else global_base
        q, k = rope(q, base, pos), rope(k, base, pos)
        k = np.repeat(k, heads // kv_heads, 0)
        v = np.repeat(v, heads // kv_heads, 0)
        scores = q @ k.transpose(0, 2, 1) / np.sqrt(hd)
        mask = np.triu(np.ones((t, t)), 1).astype(bool)
        if local:
            mask |= (pos[:, None] - pos[None, :]) >= window
        scores[:, mask] = -np.inf
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        y = (scores @ v).transpose(1, 0, 2).reshape(t, heads * hd) @ w(p + "attn_output.weight").T
        x = x + rms(y, w(p + "post_attention_norm.weight"))
        h = rms(x, w(p + "ffn_norm.weight"))
        m = (gelu(h @ w(p + "ffn_gate.weight").T) * (h @ w(p + "ffn_up.weight").T)) @ w(p + "ffn_down.weight").T
        x = x + rms(m, w(p + "post_ffw_norm.weight"))
    logits = emb @ rms(x[-1], w("output_norm.weight"))
    top = np.argsort(-logits)[:8]
    print("top", [(int(i), round(float(logits[i]), 4)) for i in top])
    print("first8", [round(float(v), 4) for v in logits[:8]])


if __name__ == "__main__":
    main(sys.argv[1], [int(x) for x in sys.argv[2].split(",")])
