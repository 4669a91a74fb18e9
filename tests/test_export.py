"""poly_epo.export: a saved policy becomes a Hugging Face folder that
transformers' PyTorch classes load, with the same logits."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from flax import nnx

from poly_epo import checkpointing, export
from poly_epo.models import init_model, preset
from poly_epo.tokenizer import char_tokenizer


def _policy(tmp_path, **cfg):
  tok = char_tokenizer()
  model = init_model(preset("tiny", vocab_size=len(tok), **cfg), seed=4)
  # Non-trivial norms so a dropped or transposed norm weight shows.
  state = nnx.state(model, nnx.Param)
  rs = np.random.RandomState(0)
  state = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * rs.randn(*x.shape).astype(np.float32)
      if "norm" in jax.tree_util.keystr(p) else x, state)
  nnx.update(model, state)
  return checkpointing.save_policy(str(tmp_path / "policy"), model, tok), \
      model, tok


def test_export_loads_in_transformers_with_equal_logits(tmp_path):
  path, model, tok = _policy(tmp_path)
  out = str(tmp_path / "hf")
  assert export.main(["--policy", path, "--out", out]) == 0
  for name in ("config.json", "generation_config.json", "model.safetensors",
               "tokenizer.json"):
    assert os.path.exists(os.path.join(out, name)), name
  gen = json.load(open(os.path.join(out, "generation_config.json")))
  assert gen["eos_token_id"] == tok.eos_token_id
  tm = transformers.AutoModelForCausalLM.from_pretrained(out).float().eval()
  ids = np.random.RandomState(1).randint(3, len(tok), (2, 13))
  with torch.no_grad():
    ref = tm(input_ids=torch.tensor(ids)).logits.numpy()
  ours = np.asarray(model(jnp.asarray(ids)))
  assert np.abs(ours - ref).max() < 1e-4
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  assert hf_tok("x=1")["input_ids"] == tok("x=1")["input_ids"]


def test_bfloat16_export_and_bad_policy(tmp_path, capsys):
  path, model, _ = _policy(tmp_path)
  out = str(tmp_path / "hf16")
  assert export.main(["--policy", path, "--out", out, "--dtype",
                      "bfloat16"]) == 0
  tm = transformers.AutoModelForCausalLM.from_pretrained(out)
  assert next(tm.parameters()).dtype == torch.bfloat16
  assert export.main(["--policy", str(tmp_path / "nope"), "--out", out]) == 2
  assert "--policy" in capsys.readouterr().err


def test_load_policy_restores_in_the_requested_dtype_and_mesh(tmp_path):
  from poly_epo import sharding
  path, model, _ = _policy(tmp_path)
  mesh = sharding.make_mesh(2, 2, 2)
  got, _, _ = checkpointing.load_policy(path, mesh, param_dtype="bfloat16",
                                        dtype="bfloat16", remat="full")
  assert got.cfg.param_dtype == "bfloat16" and got.cfg.remat == "full"
  qkv = got.layers[0].attn.qkv_proj[...]
  assert qkv.dtype == jnp.bfloat16 and len(qkv.sharding.device_set) == 8
  np.testing.assert_allclose(
      np.asarray(qkv, np.float32),
      np.asarray(model.layers[0].attn.qkv_proj[...]), atol=1e-2)


def test_a_hugging_face_folder_is_a_base_policy(tmp_path):
  path, model, tok = _policy(tmp_path)
  out = export.export_hf(model, tok, str(tmp_path / "hf"))
  got, got_tok, _ = checkpointing.load_any(out, param_dtype="float32",
                                           dtype="bfloat16")
  assert got.cfg.dtype == "bfloat16" and got.cfg.param_dtype == "float32"
  assert len(got_tok) == len(tok)
  for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                  jax.tree.leaves(nnx.state(got, nnx.Param))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(FileNotFoundError, match="neither a policy folder"):
    checkpointing.load_any(str(tmp_path))
