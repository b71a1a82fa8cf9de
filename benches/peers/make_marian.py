#!/usr/bin/env python3
"""Builds a random-weight Marian (OPUS-MT) checkpoint with the dimensions of
Helsinki-NLP/opus-mt-en-es, in the layout Helsinki-NLP publishes, so that
tidings, transformers and CTranslate2 all run the very same network.

    make_marian.py --data ntrex-dev.jsonl --out DIR [--seed 0] [--pieces 8000]

Writes into DIR: config.json, generation_config.json, model.safetensors,
source.spm, target.spm, vocab.json, tokenizer_config.json, and peers.json (how
it was made). The network: 6+6 layers, d_model 512, 8 heads, ffn 2048, vocab
65001, 512 positions, swish, scaled embeddings, encoder/decoder/output
embeddings shared, a final_logits_bias. The weights are random (seeded).

So that every tool does the same work, the end token can never win:
final_logits_bias[eos] = -1e4, and every output runs to the length cap. (As
in the published generation_config.json, forced_eos_token_id = 0 still forces
the end token at the last step a cap allows, in tools that honour it.)

The SentencePiece models are unigram models of about --pieces pieces (fewer
when the text is too small for that many: the count reached is printed and
kept in peers.json), trained on NTREX's English sentences (source.spm) and
their Spanish references (target.spm). vocab.json is joint, as in the
published checkpoint: `</s>` = 0, `<unk>` = 1, the pieces of both models, then
filler pieces `▁x{i}` up to 65000 entries, and `<pad>` = 65000.

Then it checks that transformers loads the folder back (MarianMTModel and
MarianTokenizer), with the same weights and the ids computed here.
"""

import argparse
import io
import json
import os
import sys

VOCAB = 65001
PAD = 65000
EOS = 0
UNK = 1


def log(msg):
    print(f"[make_marian] {msg}", file=sys.stderr, flush=True)


def read_ntrex(path):
    en, es = [], []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            en.extend(rec["sentences"])
            es.extend(rec["references"]["es"])
    if not en or not es:
        sys.exit(f"make_marian: no sentences in {path}")
    return en, es


def train_spm(lines, pieces, seed):
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=pieces,
        model_type="unigram",
        # The NTREX dev set is small: take as many pieces as it gives.
        hard_vocab_limit=False,
        character_coverage=1.0,
        # OPUS-MT's models: <unk> 0, <s> 1, </s> 2, no <pad>.
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def build_vocab(src_proto, tgt_proto):
    import sentencepiece as spm

    vocab = {"</s>": EOS, "<unk>": UNK}
    for proto in (src_proto, tgt_proto):
        sp = spm.SentencePieceProcessor(model_proto=proto)
        for i in range(sp.get_piece_size()):
            if sp.is_control(i) or sp.is_unknown(i):
                continue
            p = sp.id_to_piece(i)
            if p not in vocab:
                vocab[p] = len(vocab)
    real = len(vocab)
    i = 0
    while len(vocab) < PAD:
        p = f"\u2581x{i}"
        i += 1
        if p not in vocab:
            vocab[p] = len(vocab)
    vocab["<pad>"] = PAD
    assert len(vocab) == VOCAB and sorted(vocab.values()) == list(range(VOCAB))
    return vocab, real


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="ntrex-dev.jsonl")
    ap.add_argument("--out", required=True, help="model folder to write")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pieces", type=int, default=8000)
    args = ap.parse_args()

    import torch
    from transformers import GenerationConfig, MarianConfig, MarianMTModel

    os.makedirs(args.out, exist_ok=True)
    en, es = read_ntrex(args.data)
    log(f"training SentencePiece models on {len(en)} English / {len(es)} Spanish sentences")
    src_proto = train_spm(en, args.pieces, args.seed)
    tgt_proto = train_spm(es, args.pieces, args.seed)
    with open(os.path.join(args.out, "source.spm"), "wb") as f:
        f.write(src_proto)
    with open(os.path.join(args.out, "target.spm"), "wb") as f:
        f.write(tgt_proto)
    import sentencepiece as spm

    n_src = spm.SentencePieceProcessor(model_proto=src_proto).get_piece_size()
    n_tgt = spm.SentencePieceProcessor(model_proto=tgt_proto).get_piece_size()
    vocab, real = build_vocab(src_proto, tgt_proto)
    log(f"source.spm {n_src} pieces, target.spm {n_tgt} pieces; vocab.json {real} real + filler = {VOCAB}")
    with open(os.path.join(args.out, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False, indent=1)
    with open(os.path.join(args.out, "tokenizer_config.json"), "w") as f:
        json.dump(
            {
                "tokenizer_class": "MarianTokenizer",
                "source_lang": "en",
                "target_lang": "es",
                "separate_vocabs": False,
                "model_max_length": 512,
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "pad_token": "<pad>",
            },
            f,
            indent=2,
        )

    cfg = MarianConfig(
        vocab_size=VOCAB,
        decoder_vocab_size=VOCAB,
        d_model=512,
        encoder_layers=6,
        decoder_layers=6,
        encoder_attention_heads=8,
        decoder_attention_heads=8,
        encoder_ffn_dim=2048,
        decoder_ffn_dim=2048,
        max_position_embeddings=512,
        activation_function="swish",
        scale_embedding=True,
        share_encoder_decoder_embeddings=True,
        tie_word_embeddings=True,
        pad_token_id=PAD,
        eos_token_id=EOS,
        bos_token_id=EOS,
        decoder_start_token_id=PAD,
        forced_eos_token_id=EOS,
        dropout=0.1,
        attention_dropout=0.0,
        activation_dropout=0.0,
        init_std=0.02,
    )
    cfg.architectures = ["MarianMTModel"]
    torch.manual_seed(args.seed)
    model = MarianMTModel(cfg).eval()
    with torch.no_grad():
        model.final_logits_bias.zero_()
        model.final_logits_bias[0, EOS] = -1e4
    model.generation_config = GenerationConfig(
        bad_words_ids=[[PAD]],
        bos_token_id=EOS,
        decoder_start_token_id=PAD,
        eos_token_id=EOS,
        forced_eos_token_id=EOS,
        pad_token_id=PAD,
        max_length=512,
        num_beams=4,
    )
    model.save_pretrained(args.out, safe_serialization=True)
    # save_pretrained may leave generation keys in config.json or not, by
    # version; the published layout has them in generation_config.json.
    if not os.path.exists(os.path.join(args.out, "generation_config.json")):
        sys.exit("make_marian: save_pretrained wrote no generation_config.json")

    from safetensors import safe_open

    with safe_open(os.path.join(args.out, "model.safetensors"), "pt") as f:
        keys = sorted(f.keys())
    log(f"model.safetensors: {len(keys)} tensors, e.g. {[k for k in keys if 'layers' not in k]}")

    # --- Check: transformers loads it back. ---
    from transformers import MarianTokenizer

    back = MarianMTModel.from_pretrained(args.out).eval()
    sd0, sd1 = model.state_dict(), back.state_dict()
    for k, v in sd0.items():
        if k not in sd1 or not torch.equal(v, sd1[k]):
            sys.exit(f"make_marian: `{k}` differs after loading the folder back")
    if back.final_logits_bias[0, EOS].item() != -1e4:
        sys.exit("make_marian: final_logits_bias[eos] did not survive the round trip")
    tok = MarianTokenizer.from_pretrained(args.out)
    sp = spm.SentencePieceProcessor(model_proto=src_proto)
    for s in en[:50]:
        want = [vocab.get(p, UNK) for p in sp.encode(s, out_type=str)] + [EOS]
        got = tok(s)["input_ids"]
        if got != want:
            sys.exit(f"make_marian: MarianTokenizer ids differ for {s!r}:\n  {got}\n  {want}")
    unk = sum(i == UNK for s in en for i in tok(s)["input_ids"])
    batch = tok(en[:2], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = back.generate(**batch, max_new_tokens=8, num_beams=1, do_sample=False)
    log(f"round trip ok: {len(en)} sentences -> {unk} <unk> ids; generate: {out.tolist()}")
    if out.shape[1] != 9 or (out[:, 1:-1] == EOS).any():
        sys.exit(f"make_marian: expected 8 new tokens, none of them EOS before the last: {out.tolist()}")

    with open(os.path.join(args.out, "peers.json"), "w") as f:
        json.dump(
            {
                "what": "random-weight Marian with opus-mt-en-es dimensions; EOS unreachable",
                "seed": args.seed,
                "source_pieces": n_src,
                "target_pieces": n_tgt,
                "vocab_real_entries": real,
                "data": os.path.abspath(args.data),
            },
            f,
            indent=2,
        )
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()
