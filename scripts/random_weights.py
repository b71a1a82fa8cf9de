#!/usr/bin/env python3
"""Model skeletons: a model's files without its weights, and random weights
of the same shapes and types put back in their place.

    random_weights.py skeleton SRC DST    SRC: a .gguf file, or a model folder
    random_weights.py fill DST OUT [--seed N]

`skeleton` copies a model into the folder DST leaving its weights behind:
of every .gguf and .safetensors file it keeps only the header (names,
shapes, types, and in GGUF the metadata with the tokenizer), compressed, as
FILE.skeleton.xz; every other file (config.json, tokenizer.json, .spm ...)
is copied as it is. A 1.1 GB GGUF file leaves about 3 MB.

`fill` makes the model folder OUT from such a skeleton: each header gets
seeded random data of exactly the size its tensors need, so the model has
the shapes, the quantization types and the tokenizer of the original and
costs the same arithmetic and memory traffic a token. Its text is
meaningless. This is what lets a benchmark travel to a machine that cannot
download the model (the GPU bench of scripts/build-cuda.sh --slim).

What the random data is:
- quantized GGUF blocks: random bytes, with every f16 scale of a block set
  to a small fixed value (so no block holds an infinity or a NaN);
- float tensors: values of random sign and magnitude 2^-7..2^-5 (about
  0.008..0.03), except one-dimensional `*weight` tensors (norm gains),
  which are 1, and one-dimensional `*bias` tensors, which are 0;
- a `final_logits_bias` (Marian) is 0 except at the end token of the
  folder's config.json, which gets -1e4: as in benches/peers/make_marian.py,
  the end token never wins and every output runs to its length cap, so
  two runs of the same job do the same work;
- in a GGUF file, the output head's rows of the end-of-generation tokens
  (`tokenizer.ggml.eos_token_id` and the end-of-turn and turn-start tokens
  tidings stops at) are zeros: their logit is 0 while the largest of the
  other random logits is far above it, so these never win either, and a
  generation runs to its cap (the head is `output.weight`, or the
  embedding table where the file has none).

Only the Python standard library is used (no numpy), so that it runs on a
bare machine; byte-level tricks (bytes.translate and extended slices) keep
it at a few seconds a gigabyte.
"""

import argparse
import json
import lzma
import os
import random
import shutil
import struct
import sys

# GGUF tensor types: (bytes per block, weights per block, offsets of the
# block's f16 scales). Offsets from ggml's block layouts.
GGML_TYPES = {
    0: ("F32", 4, 1, ()),
    1: ("F16", 2, 1, ()),
    2: ("Q4_0", 18, 32, (0,)),
    3: ("Q4_1", 20, 32, (0, 2)),
    6: ("Q5_0", 22, 32, (0,)),
    7: ("Q5_1", 24, 32, (0, 2)),
    8: ("Q8_0", 34, 32, (0,)),
    10: ("Q2_K", 84, 256, (80, 82)),
    11: ("Q3_K", 110, 256, (108,)),
    12: ("Q4_K", 144, 256, (0, 2)),
    13: ("Q5_K", 176, 256, (0, 2)),
    14: ("Q6_K", 210, 256, (208,)),
    30: ("BF16", 2, 1, ()),
}

# A block scale of 2^-10 (f16 0x1400): a Q4_K weight is then at most
# 63 * 15 / 1024, about 0.9, and most are far smaller.
F16_SCALE = struct.pack("<H", 0x1400)

SKELETON_SUFFIX = ".skeleton.xz"
CHUNK = 1 << 24


def die(msg):
    sys.exit(f"random_weights.py: {msg}")


# --- GGUF headers ---------------------------------------------------------


class Reader:
    def __init__(self, f, path):
        self.f = f
        self.path = path

    def take(self, n):
        b = self.f.read(n)
        if len(b) != n:
            die(f"{self.path}: the file ends inside its header")
        return b

    def unpack(self, fmt):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def string(self):
        (n,) = self.unpack("Q")
        return self.take(n).decode("utf-8", "replace")


SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def gguf_value(r, vtype):
    if vtype in SCALAR:
        return r.unpack(SCALAR[vtype])[0]
    if vtype == 8:
        return r.string()
    if vtype == 9:
        (etype, n) = r.unpack("IQ")
        if etype in SCALAR:
            size = struct.calcsize("<" + SCALAR[etype])
            r.take(size * n)  # arrays of numbers: skipped, not needed
            return None
        return [gguf_value(r, etype) for _ in range(n)]
    die(f"{r.path}: unknown GGUF value type {vtype}")


# The tokens at which tidings ends a generation (models/causal.rs), besides
# the file's eos token.
STOP_TOKENS = {
    "<|im_end|>", "<|endoftext|>", "<|im_start|>", "<end_of_turn>", "<start_of_turn>",
    "<eos>", "<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>",
}


def gguf_header(path):
    """(header length, alignment, [(name, type, dims, offset)], stop token ids)."""
    with open(path, "rb") as f:
        r = Reader(f, path)
        if r.take(4) != b"GGUF":
            die(f"{path}: not a GGUF file (no GGUF magic)")
        (version,) = r.unpack("I")
        if version not in (2, 3):
            die(f"{path}: GGUF version {version}; this reads versions 2 and 3")
        (n_tensors, n_kv) = r.unpack("QQ")
        alignment = 32
        stops = set()
        for _ in range(n_kv):
            key = r.string()
            (vtype,) = r.unpack("I")
            value = gguf_value(r, vtype)
            if key == "general.alignment":
                alignment = int(value)
            elif key == "tokenizer.ggml.eos_token_id":
                stops.add(int(value))
            elif key == "tokenizer.ggml.tokens":
                stops.update(i for i, t in enumerate(value) if t in STOP_TOKENS)
        tensors = []
        for _ in range(n_tensors):
            name = r.string()
            (n_dims,) = r.unpack("I")
            dims = r.unpack("Q" * n_dims)
            (ttype, offset) = r.unpack("IQ")
            if ttype not in GGML_TYPES:
                die(f"{path}: tensor {name} has GGML type {ttype}, which this script does not know")
            tensors.append((name, ttype, dims, offset))
        end = f.tell()
    return (end + alignment - 1) // alignment * alignment, alignment, tensors, stops


def elements_of(dims):
    n = 1
    for d in dims:
        n *= d
    return n


def gguf_tensor_bytes(ttype, elements):
    _, block_bytes, block_weights, _ = GGML_TYPES[ttype]
    if elements % block_weights:
        die(f"{elements} weights do not fill whole blocks of type {GGML_TYPES[ttype][0]}")
    return elements // block_weights * block_bytes


# --- random data ------------------------------------------------------------

# f32, little-endian: byte 3 is the sign and the top seven exponent bits.
# 0x3C keeps the sign bit of a random byte: magnitudes 2^-7..2^-5.
F32_HIGH = bytes((b & 0x80) | 0x3C for b in range(256))
# f16 / bf16: byte 1 holds the sign and the exponent (f16: 5 bits, 0x24 ->
# 2^-6..2^-5 with the mantissa's top bits; bf16: the f32 layout's top byte).
F16_HIGH = bytes((b & 0x80) | 0x24 for b in range(256))


def random_floats(rng, n, width, high_table):
    data = bytearray(rng.randbytes(n * width))
    top = width - 1
    data[top::width] = data[top::width].translate(high_table)
    return data


def constant_floats(n, fmt, value):
    return struct.pack("<" + fmt, value) * n


def float_tensor(rng, name, shape_1d, n, fmt):
    """Random data for a float tensor, with norm gains 1 and biases 0."""
    width = struct.calcsize("<" + fmt)
    if shape_1d and name.endswith("weight"):
        return constant_floats(n, fmt, 1.0) if fmt != "bf16" else b"\x80\x3f" * n
    if shape_1d and name.endswith("bias"):
        return bytes(n * width)
    if fmt == "f":
        return random_floats(rng, n, 4, F32_HIGH)
    if fmt == "bf16":
        return random_floats(rng, n, 2, F32_HIGH)
    return random_floats(rng, n, 2, F16_HIGH)


def write_quantized(out, rng, ttype, elements):
    _, block_bytes, block_weights, scales = GGML_TYPES[ttype]
    blocks = elements // block_weights
    per_chunk = max(1, CHUNK // block_bytes)
    done = 0
    while done < blocks:
        n = min(per_chunk, blocks - done)
        data = bytearray(rng.randbytes(n * block_bytes))
        for off in scales:
            data[off::block_bytes] = F16_SCALE[0:1] * n
            data[off + 1 :: block_bytes] = F16_SCALE[1:2] * n
        out.write(data)
        done += n


def fill_gguf(header_bytes, out_path, rng):
    tmp = out_path + ".partial"
    with open(tmp, "wb") as out:
        out.write(header_bytes)
    header_len, alignment, tensors, stops = gguf_header(tmp)
    if header_len < len(header_bytes):
        die(f"{out_path}: the skeleton's header is longer than its tensor list says")
    names = {t[0] for t in tensors}
    head = "output.weight" if "output.weight" in names else "token_embd.weight"
    with open(tmp, "r+b") as out:
        out.truncate(header_len)
        for name, ttype, dims, offset in sorted(tensors, key=lambda t: t[3]):
            elements = elements_of(dims)
            out.seek(header_len + offset)
            kind = GGML_TYPES[ttype][0]
            if kind in ("F32", "F16", "BF16"):
                # The float tensors of these files are norm gains and biases
                # (and, in some files, embeddings or heads: random).
                one_d = name.endswith("norm.weight") or name.endswith(".bias")
                fmt = {"F32": "f", "F16": "e", "BF16": "bf16"}[kind]
                out.write(float_tensor(rng, name, one_d, elements, fmt))
            else:
                write_quantized(out, rng, ttype, elements)
            if name == head and len(dims) == 2:
                # dims = (width, vocabulary): row v holds token v's weights
                row = gguf_tensor_bytes(ttype, dims[0])
                end_of_tensor = out.tell()
                for v in sorted(stops):
                    if v < dims[1]:
                        out.seek(header_len + offset + v * row)
                        out.write(bytes(row))
                out.seek(end_of_tensor)
        end = out.tell()
        out.truncate((end + alignment - 1) // alignment * alignment)
    os.replace(tmp, out_path)
    return len(tensors)


# --- safetensors -------------------------------------------------------------

SAFETENSORS_FMT = {"F32": "f", "F16": "e", "BF16": "bf16"}


def safetensors_header(path):
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) != 8:
            die(f"{path}: too short for safetensors")
        (n,) = struct.unpack("<Q", raw)
        if n > 100_000_000:
            die(f"{path}: a header of {n} bytes: not a safetensors file?")
        return raw + f.read(n)


def fill_safetensors(header_bytes, out_path, rng, eos):
    (n,) = struct.unpack("<Q", header_bytes[:8])
    meta = json.loads(header_bytes[8 : 8 + n])
    tmp = out_path + ".partial"
    with open(tmp, "wb") as out:
        out.write(header_bytes)
        base = len(header_bytes)
        items = sorted(
            ((k, v) for k, v in meta.items() if k != "__metadata__"),
            key=lambda kv: kv[1]["data_offsets"][0],
        )
        for name, info in items:
            start, stop = info["data_offsets"]
            dtype, shape = info["dtype"], info["shape"]
            elements = elements_of(shape)
            out.seek(base + start)
            if dtype not in SAFETENSORS_FMT:
                data = bytes(stop - start)  # integer tensors (position ids): zeros
            elif name.endswith("final_logits_bias"):
                data = bytearray(bytes(stop - start))
                if eos is not None and dtype == "F32" and eos < elements:
                    data[eos * 4 : eos * 4 + 4] = struct.pack("<f", -1e4)
            else:
                data = float_tensor(rng, name, len(shape) == 1, elements, SAFETENSORS_FMT[dtype])
            if len(data) != stop - start:
                die(f"{out_path}: tensor {name}: {len(data)} bytes made for {stop - start}")
            out.write(data)
    os.replace(tmp, out_path)
    return len(items)


# --- the two commands --------------------------------------------------------


def files_under(root):
    """Relative paths of the files under root, sorted."""
    found = []
    for base, dirs, names in os.walk(root):
        dirs.sort()
        for name in names:
            found.append(os.path.relpath(os.path.join(base, name), root))
    return sorted(found)


def skeleton(src, dst):
    os.makedirs(dst, exist_ok=True)
    if os.path.isfile(src):
        root, files = os.path.dirname(src) or ".", [os.path.basename(src)]
    else:
        root, files = src, files_under(src)
    if not files:
        die(f"{src}: no files")
    kept = 0
    for rel in files:
        path, name = os.path.join(root, rel), os.path.basename(rel)
        target = os.path.join(dst, rel)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        if name.endswith(".gguf"):
            header_len, _, _, _ = gguf_header(path)
            with open(path, "rb") as f:
                header = f.read(header_len)
        elif name.endswith(".safetensors"):
            header = safetensors_header(path)
        elif name.endswith(".sha256") or name.endswith(".partial"):
            continue  # checksums of the real weights would not match
        else:
            shutil.copy2(path, target)
            continue
        with lzma.open(target + SKELETON_SUFFIX, "wb", preset=6) as out:
            out.write(header)
        kept += 1
        print(f"skeleton: {rel}: {os.path.getsize(path) / 1e6:.1f} MB -> header {len(header) / 1e6:.2f} MB",
              file=sys.stderr)
    if not kept:
        die(f"{src}: no .gguf or .safetensors file to make a skeleton of")


def fill(dst, out, seed):
    if not os.path.isdir(dst):
        die(f"{dst}: no such skeleton folder")
    os.makedirs(out, exist_ok=True)
    eos = None
    config = os.path.join(dst, "config.json")
    if os.path.isfile(config):
        with open(config, encoding="utf-8") as f:
            eos = json.load(f).get("eos_token_id")
    made = 0
    for rel in files_under(dst):
        path = os.path.join(dst, rel)
        target = os.path.join(out, rel)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        if not rel.endswith(SKELETON_SUFFIX):
            shutil.copy2(path, target)
            continue
        target = target[: -len(SKELETON_SUFFIX)]
        with lzma.open(path, "rb") as f:
            header = f.read()
        # One generator per file, seeded by the seed and the file's path.
        rng = random.Random(f"{seed}:{rel[: -len(SKELETON_SUFFIX)]}")
        if target.endswith(".gguf"):
            n = fill_gguf(header, target, rng)
        elif target.endswith(".safetensors"):
            n = fill_safetensors(header, target, rng, eos)
        else:
            die(f"{path}: a skeleton of neither GGUF nor safetensors")
        made += 1
        print(f"fill: {rel[: -len(SKELETON_SUFFIX)]}: {n} tensors, {os.path.getsize(target) / 1e6:.1f} MB",
              file=sys.stderr)
    if not made:
        die(f"{dst}: no *{SKELETON_SUFFIX} file in it")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("skeleton", help="a model without its weights")
    s.add_argument("src")
    s.add_argument("dst")
    f = sub.add_parser("fill", help="random weights into a skeleton")
    f.add_argument("dst")
    f.add_argument("out")
    f.add_argument("--seed", default="0")
    a = p.parse_args()
    if a.cmd == "skeleton":
        skeleton(a.src, a.dst)
    else:
        fill(a.dst, a.out, a.seed)


if __name__ == "__main__":
    main()
