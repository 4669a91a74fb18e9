"""Load and save Hugging Face checkpoint folders (config.json + safetensors).

`load_hf(path)` reads `config.json`, one or many `*.safetensors` files (with
`model.safetensors.index.json` when sharded) and returns our NNX `Transformer`.
`save_hf(model, path)` writes a folder transformers' PyTorch classes (and so
vLLM, SGLang, ...) load. Every problem names the tensor or file at fault.
"""

from __future__ import annotations

import json
import os
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes  # noqa: F401  (registers bfloat16 with numpy)
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from poly_epo.models.config import ModelConfig
from poly_epo.models.transformer import Transformer

INDEX_FILE = "model.safetensors.index.json"
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)

# (hf_name, our_path, to_ours(array, cfg), to_hf(array, cfg))
Entry = tuple[str, tuple, Callable, Callable]


def _same(x, cfg):
  return x


def _t(x, cfg):
  return x.T


def _in_proj(heads_attr):
  """HF [n*H, D] <-> ours [D, n, H]."""
  def to_ours(x, cfg):
    return x.T.reshape(cfg.hidden_size, getattr(cfg, heads_attr), cfg.head_dim)

  def to_hf(x, cfg):
    return x.reshape(cfg.hidden_size, -1).T
  return to_ours, to_hf


def _bias(heads_attr):
  def to_ours(x, cfg):
    return x.reshape(getattr(cfg, heads_attr), cfg.head_dim)

  def to_hf(x, cfg):
    return x.reshape(-1)
  return to_ours, to_hf


def _o_to_ours(x, cfg):
  return x.T.reshape(cfg.num_heads, cfg.head_dim, cfg.hidden_size)


def _o_to_hf(x, cfg):
  return x.reshape(-1, cfg.hidden_size).T


def tensor_map(cfg: ModelConfig) -> list[Entry]:
  """Every tensor of a checkpoint of `cfg`, with its place in our model."""
  out: list[Entry] = [("model.embed_tokens.weight", ("embed",), _same, _same),
                      ("model.norm.weight", ("final_norm", "weight"), _same,
                       _same)]
  if not cfg.tie_embeddings:
    out.append(("lm_head.weight", ("lm_head",), _same, _same))
  for i in range(cfg.num_layers):
    p, l = f"model.layers.{i}.", ("layers", i)
    out += [
        (p + "input_layernorm.weight", l + ("input_norm", "weight"), _same,
         _same),
        (p + "post_attention_layernorm.weight",
         l + ("post_attn_norm", "weight"), _same, _same),
        (p + "self_attn.q_proj.weight", l + ("attn", "q_proj"),
         *_in_proj("num_heads")),
        (p + "self_attn.k_proj.weight", l + ("attn", "k_proj"),
         *_in_proj("num_kv_heads")),
        (p + "self_attn.v_proj.weight", l + ("attn", "v_proj"),
         *_in_proj("num_kv_heads")),
        (p + "self_attn.o_proj.weight", l + ("attn", "o_proj"), _o_to_ours,
         _o_to_hf),
        (p + "mlp.gate_proj.weight", l + ("mlp", "gate_proj"), _t, _t),
        (p + "mlp.up_proj.weight", l + ("mlp", "up_proj"), _t, _t),
        (p + "mlp.down_proj.weight", l + ("mlp", "down_proj"), _t, _t),
    ]
    if cfg.qkv_bias:
      out += [(p + "self_attn.q_proj.bias", l + ("attn", "q_bias"),
               *_bias("num_heads")),
              (p + "self_attn.k_proj.bias", l + ("attn", "k_bias"),
               *_bias("num_kv_heads")),
              (p + "self_attn.v_proj.bias", l + ("attn", "v_bias"),
               *_bias("num_kv_heads"))]
    if cfg.o_bias:
      out.append((p + "self_attn.o_proj.bias", l + ("attn", "o_bias"), _same,
                  _same))
    if cfg.qk_norm:
      out += [(p + "self_attn.q_norm.weight", l + ("attn", "q_norm", "weight"),
               _same, _same),
              (p + "self_attn.k_norm.weight", l + ("attn", "k_norm", "weight"),
               _same, _same)]
    if cfg.mlp_bias:
      out += [(p + "mlp.gate_proj.bias", l + ("mlp", "gate_bias"), _same,
               _same),
              (p + "mlp.up_proj.bias", l + ("mlp", "up_bias"), _same, _same),
              (p + "mlp.down_proj.bias", l + ("mlp", "down_bias"), _same,
               _same)]
  return out


def _get(obj, path):
  for p in path:
    obj = obj[p] if isinstance(p, int) else getattr(obj, p)
  return obj


def _set(obj, path, value):
  parent = _get(obj, path[:-1])
  setattr(parent, path[-1], nnx.Param(value))


def _safetensors_files(path: str) -> dict[str, str]:
  """Tensor name -> file, from the index or by opening every shard."""
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):
    with open(index) as f:
      try:
        weight_map = json.load(f)["weight_map"]
      except (json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{index}: not a safetensors index ({e!r})") from None
    for fname in set(weight_map.values()):
      if not os.path.exists(os.path.join(path, fname)):
        raise FileNotFoundError(
            f"{index} lists shard {fname!r}, which is missing from {path}")
    return {k: os.path.join(path, v) for k, v in weight_map.items()}
  files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
  if not files:
    raise FileNotFoundError(f"no *.safetensors files in {path}")
  names = {}
  for fname in files:
    with safe_open(os.path.join(path, fname), framework="numpy") as f:
      for k in f.keys():
        names[k] = os.path.join(path, fname)
  return names


def _read(files: dict[str, str], names) -> Iterator[tuple[str, np.ndarray]]:
  by_file: dict[str, list[str]] = {}
  for n in names:
    by_file.setdefault(files[n], []).append(n)
  for fname, ns in by_file.items():
    with safe_open(fname, framework="numpy") as f:
      for n in ns:
        yield n, f.get_tensor(n)


def load_hf(path: str, dtype: str = "float32", **config_overrides
            ) -> Transformer:
  """Load a local Hugging Face folder into a `Transformer`.

  Args:
    path: folder with config.json and *.safetensors (sharded or not).
    dtype: param and compute dtype ("float32" or "bfloat16").
    **config_overrides: `ModelConfig` fields to override.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint folder {path!r} does not exist")
  cfg = ModelConfig.from_hf_json(path, param_dtype=dtype, dtype=dtype,
                                 **config_overrides)
  files = _safetensors_files(path)
  entries = tensor_map(cfg)
  expected = {e[0] for e in entries}
  extra = sorted(n for n in files if n not in expected
                 and not n.endswith(_IGNORED_SUFFIXES))
  tied_head = cfg.tie_embeddings and "lm_head.weight" in extra
  if tied_head:
    extra.remove("lm_head.weight")
  if extra:
    raise ValueError(f"{path}: unexpected tensors for a {cfg.model_type} "
                     f"config: {', '.join(extra[:10])}"
                     + (" ..." if len(extra) > 10 else ""))
  missing = sorted(expected - set(files))
  if missing:
    raise ValueError(f"{path}: missing tensors: {', '.join(missing[:10])}"
                     + (" ..." if len(missing) > 10 else ""))

  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  by_name = {e[0]: e for e in entries}
  pd = jnp.dtype(cfg.param_dtype)
  wanted = list(expected) + (["lm_head.weight"] if tied_head else [])
  for name, arr in _read(files, wanted):
    if tied_head and name == "lm_head.weight":
      emb = next(_read(files, ["model.embed_tokens.weight"]))[1]
      if arr.shape != emb.shape or not np.array_equal(arr, emb):
        raise ValueError(f"{path}: lm_head.weight differs from "
                         "model.embed_tokens.weight but the config ties them")
      continue
    _, our_path, to_ours, to_hf = by_name[name]
    target = _get(model, our_path)
    want = to_hf(np.empty(target.shape, np.int8), cfg).shape
    if tuple(arr.shape) != tuple(want):
      raise ValueError(f"{path}: tensor {name} has shape {tuple(arr.shape)}, "
                       f"but the config needs {tuple(want)}")
    value = to_ours(arr, cfg)
    _set(model, our_path, jnp.asarray(value.astype(np.float32), pd)
         if arr.dtype != pd else jnp.asarray(value))
  return model


def _atomic_write_json(obj, fname):
  tmp = fname + ".tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2)
  os.replace(tmp, fname)


def save_hf(model: Transformer, path: str, *, dtype: str | None = None,
            max_shard_bytes: int | None = None, tokenizer=None) -> None:
  """Write `model` as a Hugging Face folder.

  Args:
    model: our `Transformer`.
    path: output folder (created).
    dtype: tensor dtype in the files (default: the params' dtype).
    max_shard_bytes: split the weights into several files of at most about
      this size and write `model.safetensors.index.json`.
    tokenizer: optional `PreTrainedTokenizerFast` saved beside the weights.
  """
  cfg = model.cfg
  os.makedirs(path, exist_ok=True)
  np_dtype = np.dtype(jnp.dtype(dtype or cfg.param_dtype))
  tensors = {}
  for name, our_path, _, to_hf in tensor_map(cfg):
    arr = np.asarray(jax.device_get(_get(model, our_path)[...]))
    tensors[name] = np.ascontiguousarray(to_hf(arr, cfg).astype(np_dtype))
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  for name, arr in tensors.items():
    if max_shard_bytes and size and size + arr.nbytes > max_shard_bytes:
      shards.append({})
      size = 0
    shards[-1][name] = arr
    size += arr.nbytes
  meta = {"format": "pt"}
  if len(shards) == 1:
    tmp = os.path.join(path, "model.safetensors.tmp")
    save_file(shards[0], tmp, metadata=meta)
    os.replace(tmp, os.path.join(path, "model.safetensors"))
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
      tmp = os.path.join(path, fname + ".tmp")
      save_file(shard, tmp, metadata=meta)
      os.replace(tmp, os.path.join(path, fname))
      weight_map.update({n: fname for n in shard})
    total = sum(a.nbytes for a in tensors.values())
    _atomic_write_json({"metadata": {"total_size": total},
                        "weight_map": weight_map},
                       os.path.join(path, INDEX_FILE))
  hf_cfg = cfg.to_hf_dict()
  hf_cfg["torch_dtype"] = str(np_dtype) if np_dtype != np.dtype(
      ml_dtypes.bfloat16) else "bfloat16"
  _atomic_write_json(hf_cfg, os.path.join(path, "config.json"))
  if tokenizer is not None:
    tokenizer.save_pretrained(path)
