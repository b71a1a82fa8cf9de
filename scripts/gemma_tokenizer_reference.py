#!/usr/bin/env python3
"""Reference token ids for the Gemma 3 GGUF tokenizer (tidings' SentencePiece builder).

Builds a SentencePiece model (protobuf) from the `tokenizer.ggml.*` metadata of a
GGUF file -- pieces, scores and piece types, BPE with byte fallback, spaces
escaped as U+2581, no dummy prefix unless `tokenizer.ggml.add_space_prefix`
says so -- loads it with the `sentencepiece` library and prints the ids of a
few sentences as a Rust array, for `tests/it/causal.rs` and
`src/models/tokenizer.rs`.

    python3 -m pip install gguf sentencepiece protobuf
    python3 scripts/gemma_tokenizer_reference.py path/to/gemma-3-270m-q4_k_m.gguf
"""
import sys

import gguf
import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2 as pb

SENTENCES = [
    "The government said on Tuesday that the new budget would be published next week.",
    "El gobierno dijo el martes que el nuevo presupuesto se publicará la próxima semana.",
    "دولت روز سه‌شنبه اعلام کرد که بودجه جدید هفته آینده منتشر خواهد شد.",
    "In 2023, 1,234,567 people paid $89.99 (about 12%) for 3.5kg.",
    "Great news 🎉🚀 — see you at 10:30!",
    "Line one.\n\nLine  two,   spaced\tand tabbed.",
]


def field(reader, key):
    f = reader.fields.get(key)
    if f is None:
        return None
    return [f.parts[i] for i in f.data]


def main(path):
    r = gguf.GGUFReader(path)
    tokens = [bytes(p).decode("utf-8") for p in field(r, "tokenizer.ggml.tokens")]
    scores = [float(p[0]) for p in field(r, "tokenizer.ggml.scores")]
    types = [int(p[0]) for p in field(r, "tokenizer.ggml.token_type")]
    prefix = field(r, "tokenizer.ggml.add_space_prefix")
    add_space_prefix = bool(prefix[0][0]) if prefix else True

    unk = field(r, "tokenizer.ggml.unknown_token_id")
    unk_id = int(unk[0][0]) if unk else types.index(2)
    # SentencePiece insists that the unknown piece has the UNKNOWN type; Gemma's
    # GGUF marks it CONTROL.
    types[unk_id] = 2

    m = pb.ModelProto()
    for t, s, ty in zip(tokens, scores, types):
        if ty == 4:
            # llama.cpp's converter writes user-defined pieces with real spaces
            # (it matches them in the raw text); the original SentencePiece
            # model has them with U+2581 and matches them after escaping.
            t = t.replace(" ", "\u2581")
        p = m.pieces.add()
        p.piece, p.score, p.type = t, s, ty  # llama.cpp's types use SentencePiece's numbering
    m.trainer_spec.model_type = pb.TrainerSpec.BPE
    m.trainer_spec.vocab_size = len(tokens)
    m.trainer_spec.byte_fallback = True
    m.trainer_spec.unk_id = unk_id
    m.trainer_spec.bos_id = tokens.index("<bos>") if "<bos>" in tokens else -1
    m.trainer_spec.eos_id = tokens.index("<eos>") if "<eos>" in tokens else -1
    m.trainer_spec.pad_id = tokens.index("<pad>") if "<pad>" in tokens else -1
    m.normalizer_spec.name = "identity"
    m.normalizer_spec.add_dummy_prefix = add_space_prefix
    m.normalizer_spec.remove_extra_whitespaces = False
    m.normalizer_spec.escape_whitespaces = True

    sp = spm.SentencePieceProcessor()
    sp.LoadFromSerializedProto(m.SerializeToString())
    print("const REFERENCE: &[(&str, &[u32])] = &[")
    for s in SENTENCES:
        ids = sp.encode(s)
        assert sp.decode(ids) == s, (s, sp.decode(ids))
        print(f"    ({rust_str(s)}, &{ids}),")
    print("];")


def rust_str(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


if __name__ == "__main__":
    main(sys.argv[1])
