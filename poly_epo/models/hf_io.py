"""Load and save Hugging Face checkpoint folders (config.json + safetensors).

`load_hf(path)` reads `config.json`, one or many `*.safetensors` files (with
`model.safetensors.index.json` when sharded) and returns our NNX `Transformer`.
`save_hf(model, path)` writes a folder transformers' PyTorch classes (and so
vLLM, SGLang, ...) load. Every problem names the tensor or file at fault.
"""

from __future__ import annotations

import contextlib
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

# (our_path, hf_names, to_ours(list of HF arrays, cfg) -> our array,
#  to_hf(our array, cfg) -> list of HF arrays). Our fused q/k/v and gate/up
# params each gather several HF tensors.
Entry = tuple[tuple, list[str], Callable, Callable]


def _one(to_ours, to_hf):
  return (lambda xs, cfg: to_ours(xs[0], cfg), lambda x, cfg: [to_hf(x, cfg)])


_SAME = _one(lambda x, cfg: x, lambda x, cfg: x)
_T = _one(lambda x, cfg: x.T, lambda x, cfg: x.T)
_O_PROJ = _one(  # HF [D, N*H] <-> ours [N, H, D]
    lambda x, cfg: x.T.reshape(cfg.num_heads, cfg.head_dim, cfg.hidden_size),
    lambda x, cfg: x.reshape(-1, cfg.hidden_size).T)


def _qkv_to_ours(xs, cfg):
  """HF q [N*H, D], k/v [K*H, D] -> ours [D, K, G + 2, H]."""
  d, k, h = cfg.hidden_size, cfg.num_kv_heads, cfg.head_dim
  q, kk, v = (x.T.reshape(d, k, -1, h) for x in xs)
  return np.concatenate([q, kk, v], axis=2)


def _qkv_to_hf(w, cfg):
  d, g = cfg.hidden_size, cfg.num_heads // cfg.num_kv_heads
  return [w[:, :, :g].reshape(d, -1).T, w[:, :, g].reshape(d, -1).T,
          w[:, :, g + 1].reshape(d, -1).T]


def _qkv_bias_to_ours(xs, cfg):
  k, h = cfg.num_kv_heads, cfg.head_dim
  return np.concatenate([x.reshape(k, -1, h) for x in xs], axis=1)


def _qkv_bias_to_hf(b, cfg):
  g = cfg.num_heads // cfg.num_kv_heads
  return [b[:, :g].reshape(-1), b[:, g].reshape(-1), b[:, g + 1].reshape(-1)]


_GATE_UP = (lambda xs, cfg: np.stack([x.T for x in xs], axis=1),
            lambda w, cfg: [w[:, 0].T, w[:, 1].T])
_GATE_UP_BIAS = (lambda xs, cfg: np.stack(xs, axis=0),
                 lambda b, cfg: [b[0], b[1]])


def tensor_map(cfg: ModelConfig) -> list[Entry]:
  """Every param of our model with the HF tensors it is made of."""
  out: list[Entry] = [(("embed",), ["model.embed_tokens.weight"], *_SAME),
                      (("final_norm", "weight"), ["model.norm.weight"],
                       *_SAME)]
  if not cfg.tie_embeddings:
    out.append((("lm_head",), ["lm_head.weight"], *_SAME))
  for i in range(cfg.num_layers):
    p, l = f"model.layers.{i}.", ("layers", i)
    a = p + "self_attn."
    out += [
        (l + ("input_norm", "weight"), [p + "input_layernorm.weight"], *_SAME),
        (l + ("post_attn_norm", "weight"),
         [p + "post_attention_layernorm.weight"], *_SAME),
        (l + ("attn", "qkv_proj"),
         [a + "q_proj.weight", a + "k_proj.weight", a + "v_proj.weight"],
         _qkv_to_ours, _qkv_to_hf),
        (l + ("attn", "o_proj"), [a + "o_proj.weight"], *_O_PROJ),
        (l + ("mlp", "gate_up_proj"),
         [p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"], *_GATE_UP),
        (l + ("mlp", "down_proj"), [p + "mlp.down_proj.weight"], *_T),
    ]
    if cfg.qkv_bias:
      out.append((l + ("attn", "qkv_bias"),
                  [a + "q_proj.bias", a + "k_proj.bias", a + "v_proj.bias"],
                  _qkv_bias_to_ours, _qkv_bias_to_hf))
    if cfg.o_bias:
      out.append((l + ("attn", "o_bias"), [a + "o_proj.bias"], *_SAME))
    if cfg.qk_norm:
      out += [(l + ("attn", "q_norm", "weight"), [a + "q_norm.weight"],
               *_SAME),
              (l + ("attn", "k_norm", "weight"), [a + "k_norm.weight"],
               *_SAME)]
    if cfg.mlp_bias:
      out += [(l + ("mlp", "gate_up_bias"),
               [p + "mlp.gate_proj.bias", p + "mlp.up_proj.bias"],
               *_GATE_UP_BIAS),
              (l + ("mlp", "down_bias"), [p + "mlp.down_proj.bias"], *_SAME)]
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
    with _open(os.path.join(path, fname)) as f:
      for k in f.keys():
        names[k] = os.path.join(path, fname)
  return names


@contextlib.contextmanager
def _open(fname: str):
  """`safe_open`, a damaged file (truncated, not safetensors) being one
  ValueError naming it."""
  try:
    with safe_open(fname, framework="numpy") as f:
      yield f
  except Exception as e:  # noqa: BLE001 - filtered just below.
    if not isinstance(e, (OSError, ValueError, RuntimeError)) and \
        type(e).__name__ != "SafetensorError":
      raise
    why = (str(e).splitlines() or [type(e).__name__])[0]
    raise ValueError(f"{fname}: damaged safetensors file ({why}); download, "
                     "convert or export the model again") from None


def _read(files: dict[str, str], names) -> Iterator[tuple[str, np.ndarray]]:
  by_file: dict[str, list[str]] = {}
  for n in names:
    by_file.setdefault(files[n], []).append(n)
  for fname, ns in by_file.items():
    with _open(fname) as f:
      for n in ns:
        yield n, f.get_tensor(n)


def load_hf(path: str, dtype: str = "float32", *, mesh=None,
            **config_overrides) -> Transformer:
  """Load a local Hugging Face folder into a `Transformer`.

  Tensors are read one at a time (a fused q/k/v reads its three), converted
  to our layout and placed straight into their target dtype and sharding
  (`jax.make_array_from_callback`: each device receives its own slice, on
  every host of a pod), so no whole-model copy exists on the host or on one
  device.

  Args:
    path: folder with config.json and *.safetensors (sharded or not).
    dtype: param and compute dtype ("float32" or "bfloat16"); override
      either with `param_dtype=` / `dtype=` in `config_overrides`.
    mesh: shard every parameter over it (`poly_epo.sharding` rules); None
      places them on this process's first device.
    **config_overrides: `ModelConfig` fields to override.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"checkpoint folder {path!r} does not exist")
  cfg = ModelConfig.from_hf_json(
      path, **{"param_dtype": dtype, "dtype": dtype, **config_overrides})
  files = _safetensors_files(path)
  entries = tensor_map(cfg)
  expected = {n for e in entries for n in e[1]}
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
  pd = np.dtype(jnp.dtype(cfg.param_dtype))
  if tied_head:
    head = next(_read(files, ["lm_head.weight"]))[1]
    emb = next(_read(files, ["model.embed_tokens.weight"]))[1]
    if head.shape != emb.shape or not np.array_equal(head, emb):
      raise ValueError(f"{path}: lm_head.weight differs from "
                       "model.embed_tokens.weight but the config ties them")
    del head, emb
  for our_path, names, to_ours, to_hf in entries:
    target = _get(model, our_path)
    wants = to_hf(np.empty(target.shape, np.int8), cfg)
    tensors = dict(_read(files, names))
    for name, want in zip(names, wants):
      if tuple(tensors[name].shape) != tuple(want.shape):
        raise ValueError(f"{path}: tensor {name} has shape "
                         f"{tuple(tensors[name].shape)}, but the config "
                         f"needs {tuple(want.shape)}")
    value = to_ours([tensors.pop(n).astype(np.float32) for n in names], cfg)
    value = np.ascontiguousarray(value.astype(pd))
    _set(model, our_path, _place(value, our_path, mesh))
  return model


def _place(value: np.ndarray, our_path, mesh) -> jax.Array:
  """`value` as a jax.Array sharded by its parameter rule over `mesh`."""
  if mesh is None:
    return jax.device_put(value, jax.local_devices()[0])
  from poly_epo import sharding
  spec = sharding.param_spec([our_path[-1]], value.shape, mesh)
  return jax.make_array_from_callback(
      value.shape, jax.sharding.NamedSharding(mesh, spec),
      lambda index: value[index])


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
  from poly_epo import distributed
  cfg = model.cfg
  main = distributed.is_main()
  np_dtype = np.dtype(jnp.dtype(dtype or cfg.param_dtype))
  tensors = {}
  for our_path, names, _, to_hf in tensor_map(cfg):
    # Every process takes part in gathering a multi-host-sharded parameter;
    # only the main process keeps and writes it.
    arr = distributed.host_value(_get(model, our_path)[...])
    if main:
      for name, t in zip(names, to_hf(arr.astype(np.float32), cfg)):
        tensors[name] = np.ascontiguousarray(t.astype(np_dtype))
  if not main:
    return
  os.makedirs(path, exist_ok=True)
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
  gen = {"do_sample": True, "temperature": 1.0, "top_p": 1.0,
         "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id,
         "pad_token_id": cfg.pad_token_id}
  if tokenizer is not None:
    for field in ("bos_token_id", "eos_token_id", "pad_token_id"):
      if getattr(tokenizer, field, None) is not None:
        gen[field] = getattr(tokenizer, field)
  _atomic_write_json({k: v for k, v in gen.items() if v is not None},
                     os.path.join(path, "generation_config.json"))
  if tokenizer is not None:
    tokenizer.save_pretrained(path)
