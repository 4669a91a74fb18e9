"""Policy checkpoints: Orbax params + model config + tokenizer, one folder.

Layout of `path/`: `params/` (Orbax), `model_config.json`, `tokenizer/`
(`save_pretrained`), `meta.json` (free-form: task, steps, metrics). The folder
is written under a temporary name and renamed, so a killed save never leaves
a half-written policy behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil

import jax
import orbax.checkpoint as ocp
from flax import nnx

from poly_epo.models.config import ModelConfig
from poly_epo.models.transformer import Transformer
from poly_epo.tokenizer import load_tokenizer


def config_to_dict(cfg: ModelConfig) -> dict:
  return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> ModelConfig:
  d = dict(d)
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = tuple(d["rope_scaling"])
  return ModelConfig(**d)


def save_policy(path: str, model: Transformer, tokenizer, meta: dict | None
                = None) -> str:
  path = os.path.abspath(path)
  tmp = path + ".tmp"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(tmp, "params"), nnx.state(model, nnx.Param))
  with open(os.path.join(tmp, "model_config.json"), "w") as f:
    json.dump(config_to_dict(model.cfg), f, indent=2)
  tokenizer.save_pretrained(os.path.join(tmp, "tokenizer"))
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump(meta or {}, f, indent=2)
  if os.path.exists(path):
    old = path + ".old"
    shutil.rmtree(old, ignore_errors=True)
    os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.replace(tmp, path)
  return path


def load_policy(path: str):
  """(model, tokenizer, meta) from a folder written by `save_policy`."""
  for name in ("params", "model_config.json", "tokenizer"):
    if not os.path.exists(os.path.join(path, name)):
      raise FileNotFoundError(f"policy checkpoint {path!r} has no {name}")
  with open(os.path.join(path, "model_config.json")) as f:
    cfg = config_from_dict(json.load(f))
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_params, rest = nnx.split(abstract, nnx.Param, ...)
  # Restore onto this process's first device, whatever topology saved it
  # (a policy pretrained on CPU loads on a GPU).
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract_params = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device),
      abstract_params)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.abspath(os.path.join(path, "params")),
                           abstract_params)
  model = nnx.merge(graphdef, params, rest)
  tokenizer = load_tokenizer(os.path.join(path, "tokenizer"))
  meta = {}
  if os.path.exists(os.path.join(path, "meta.json")):
    with open(os.path.join(path, "meta.json")) as f:
      meta = json.load(f)
  return model, tokenizer, meta
