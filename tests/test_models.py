"""poly_epo.models: logit parity with transformers' PyTorch models, HF I/O."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.numpy import load_file, save_file

from hf_fixtures import make_hf_model, save_hf_model
from poly_epo.models import ModelConfig, init_model, load_hf, preset, save_hf

KINDS = ["llama", "llama3-rope", "qwen2", "qwen3"]


def _padded_batch(vocab, seed=0):
  """Left-padded [3, 11] batch with real lengths 11, 6, 2 and its positions."""
  rs = np.random.RandomState(seed)
  tokens = rs.randint(0, vocab, (3, 11))
  mask = np.zeros((3, 11), bool)
  for row, n in enumerate((11, 6, 2)):
    mask[row, 11 - n:] = True
  tokens[~mask] = 0
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0)
  return tokens, mask, positions


def _torch_logits(model, tokens, mask, positions):
  with torch.no_grad():
    return model(input_ids=torch.tensor(tokens),
                 attention_mask=torch.tensor(mask.astype(np.int64)),
                 position_ids=torch.tensor(positions)).logits.numpy()


def _max_diff_on_valid(ours, ref, mask):
  return float(np.abs(np.asarray(ours) - ref)[mask].max())


@pytest.fixture(scope="module", params=KINDS)
def hf_checkpoint(request, tmp_path_factory):
  model = make_hf_model(request.param)
  path = str(tmp_path_factory.mktemp(request.param))
  save_hf_model(model, path)
  return request.param, model, path


def test_logit_parity_left_padded(hf_checkpoint):
  _, torch_model, path = hf_checkpoint
  ours = load_hf(path)
  tokens, mask, positions = _padded_batch(ours.cfg.vocab_size)
  ref = _torch_logits(torch_model, tokens, mask, positions)
  out = ours(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
  assert out.shape == ref.shape
  assert _max_diff_on_valid(out, ref, mask) < 1e-4
  # Default positions (count of real tokens before each one) agree.
  out2 = ours(jnp.asarray(tokens), None, jnp.asarray(mask))
  assert _max_diff_on_valid(out2, ref, mask) < 1e-4


def test_qwen3_config_features(hf_checkpoint):
  kind, _, path = hf_checkpoint
  cfg = ModelConfig.from_hf_json(path)
  if kind == "qwen3":
    assert cfg.qk_norm and not cfg.tie_embeddings and cfg.num_kv_heads == 2
    assert cfg.head_dim == 24  # Not hidden / heads: read from config.json.
  if kind == "qwen2":
    assert cfg.qkv_bias and not cfg.o_bias and cfg.tie_embeddings


def test_save_load_round_trip_and_torch_reads_it(hf_checkpoint, tmp_path):
  _, torch_model, path = hf_checkpoint
  ours = load_hf(path)
  save_hf(ours, str(tmp_path / "rt"))
  again = load_hf(str(tmp_path / "rt"))
  tokens, mask, positions = _padded_batch(ours.cfg.vocab_size, seed=1)
  ref = _torch_logits(torch_model, tokens, mask, positions)
  out = again(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
  assert _max_diff_on_valid(out, ref, mask) < 1e-4
  # transformers' PyTorch class loads what we wrote, with the same logits.
  import transformers
  back = transformers.AutoModelForCausalLM.from_pretrained(
      str(tmp_path / "rt")).float().eval()
  ref2 = _torch_logits(back, tokens, mask, positions)
  assert _max_diff_on_valid(ref2, ref, mask) < 1e-5


def test_sharded_checkpoints_load(tmp_path):
  torch_model = make_hf_model("qwen3", seed=3)
  hf_dir = str(tmp_path / "hf_sharded")
  save_hf_model(torch_model, hf_dir, max_shard_size="40KB")
  files = [f for f in os.listdir(hf_dir) if f.endswith(".safetensors")]
  assert len(files) > 1 and os.path.exists(
      os.path.join(hf_dir, "model.safetensors.index.json"))
  ours = load_hf(hf_dir)
  tokens, mask, positions = _padded_batch(ours.cfg.vocab_size)
  ref = _torch_logits(torch_model, tokens, mask, positions)
  out = ours(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
  assert _max_diff_on_valid(out, ref, mask) < 1e-4
  # Our own sharded writer, read back by us.
  save_hf(ours, str(tmp_path / "ours_sharded"), max_shard_bytes=30_000)
  with open(tmp_path / "ours_sharded" / "model.safetensors.index.json") as f:
    assert len(set(json.load(f)["weight_map"].values())) > 1
  again = load_hf(str(tmp_path / "ours_sharded"))
  out2 = again(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
  np.testing.assert_array_equal(np.asarray(out2), np.asarray(out))


def test_bfloat16_load():
  torch_model = make_hf_model("qwen2")
  import tempfile
  with tempfile.TemporaryDirectory() as d:
    save_hf_model(torch_model.to(torch.bfloat16), d)
    ours = load_hf(d, dtype="bfloat16")
  assert ours.embed[...].dtype == jnp.bfloat16
  tokens, mask, positions = _padded_batch(ours.cfg.vocab_size)
  ref = _torch_logits(torch_model.float(), tokens, mask, positions)
  out = ours(jnp.asarray(tokens), jnp.asarray(positions), jnp.asarray(mask))
  assert out.dtype == jnp.float32
  assert _max_diff_on_valid(out, ref, mask) < 0.1  # bf16 rounding only.


@pytest.fixture()
def qwen2_dir(tmp_path):
  path = str(tmp_path / "qwen2")
  save_hf_model(make_hf_model("qwen2"), path)
  return path


def _rewrite(path, fn):
  fname = os.path.join(path, "model.safetensors")
  tensors = load_file(fname)
  fn(tensors)
  save_file(tensors, fname, metadata={"format": "pt"})


def test_missing_tensor_is_named(qwen2_dir):
  name = "model.layers.1.self_attn.k_proj.bias"
  _rewrite(qwen2_dir, lambda t: t.pop(name))
  with pytest.raises(ValueError, match=name.replace(".", r"\.")):
    load_hf(qwen2_dir)


def test_wrong_shape_is_named(qwen2_dir):
  name = "model.layers.0.mlp.up_proj.weight"
  _rewrite(qwen2_dir, lambda t: t.__setitem__(name, t[name][:, :-1].copy()))
  with pytest.raises(ValueError, match=name.replace(".", r"\.") + ".*shape"):
    load_hf(qwen2_dir)


def test_extra_tensor_is_named(qwen2_dir):
  _rewrite(qwen2_dir, lambda t: t.__setitem__(
      "model.layers.0.mlp.surprise", np.zeros(3, np.float32)))
  with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.surprise"):
    load_hf(qwen2_dir)


def test_unknown_model_type_is_named(qwen2_dir):
  cfg_file = os.path.join(qwen2_dir, "config.json")
  with open(cfg_file) as f:
    cfg = json.load(f)
  cfg["model_type"] = "mamba"
  with open(cfg_file, "w") as f:
    json.dump(cfg, f)
  with pytest.raises(ValueError, match="mamba"):
    load_hf(qwen2_dir)


def test_missing_folder_and_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    load_hf(str(tmp_path / "nowhere"))
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_hf(str(tmp_path / "empty"))


def test_presets_and_param_count():
  model = init_model(preset("tiny", vocab_size=50))
  from flax import nnx
  n = sum(x.size for x in __import__("jax").tree.leaves(
      nnx.state(model, nnx.Param)))
  assert n == model.cfg.num_params
  with pytest.raises(ValueError, match="unknown model preset"):
    preset("gigantic")
  with pytest.raises(ValueError, match="num_kv_heads"):
    preset("tiny", num_kv_heads=3)


def test_attention_paths_and_remat_give_equal_losses_and_gradients():
  import jax
  from flax import nnx
  from poly_epo import logprobs
  tokens, mask, _ = _padded_batch(50, seed=3)
  # Only log-probs of real tokens predicted from real positions count (as
  # in every loss): padding queries' outputs differ between the paths.
  real = mask[:, -5:] & mask[:, -6:-1]
  weights = jnp.asarray(np.random.RandomState(4).randn(3, 5) * real,
                        jnp.float32)

  def loss_and_grad(attention, remat, chunk=0):
    cfg = preset("tiny", vocab_size=50, attention=attention, remat=remat,
                 attention_chunk=chunk)
    graphdef, params = nnx.split(init_model(cfg, seed=2), nnx.Param)

    def loss(p):
      model = nnx.merge(graphdef, p)
      lp, ent = logprobs.completion_logprobs(
          model, jnp.asarray(tokens), jnp.asarray(mask), 6, chunk=2)
      return jnp.sum(lp * weights) + 0.1 * jnp.sum(ent * real)
    val, g = jax.jit(jax.value_and_grad(loss))(params)
    return float(val), np.concatenate(
        [np.asarray(x).ravel() for x in jax.tree.leaves(g)])

  ref_val, ref_g = loss_and_grad("einsum", "none")
  for case in [("xla", "none"), ("einsum", "full"), ("xla", "full"),
               ("xla", "dots"), ("einsum", "none", 3), ("xla", "full", 4),
               ("splash", "none"), ("splash", "full")]:
    val, g = loss_and_grad(*case)
    assert val == pytest.approx(ref_val, abs=1e-5), case
    np.testing.assert_allclose(g, ref_g, atol=1e-5, err_msg=str(case))


def test_splash_equals_xla_attention_on_a_mesh_with_long_padded_rows():
  """Interpret mode on CPU: 130 positions (padded to two kernel blocks),
  left padding of different lengths, rows over an 8-device mesh (the kernel
  runs per shard)."""
  import jax
  from poly_epo import sharding
  from poly_epo.models.splash import attend_splash
  from poly_epo.models.transformer import attend_dpa
  rs = np.random.RandomState(0)
  b, t, n, k, h = 8, 130, 4, 2, 16
  q = jnp.asarray(rs.randn(b, t, n, h), jnp.float32)
  kk = jnp.asarray(rs.randn(b, t, k, h), jnp.float32)
  v = jnp.asarray(rs.randn(b, t, k, h), jnp.float32)
  valid = np.arange(t)[None] >= rs.randint(0, 60, size=(b, 1))
  causal = np.tril(np.ones((t, t), bool))
  mask = jnp.asarray(causal[None] & valid[:, None, :])
  ref = attend_dpa(q, kk, v, mask, "xla")
  mesh = sharding.make_mesh(4, 2, 1)

  def f(q, kk, v, valid):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return attend_splash(q, kk, v, valid)
  put = lambda x: jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
  got = jax.jit(f)(put(q), put(kk), put(v), put(jnp.asarray(valid)))
  np.testing.assert_allclose(np.asarray(got)[valid], np.asarray(ref)[valid],
                             atol=1e-5)


def test_splash_training_forward_compiles_for_a_v5p_slice(monkeypatch):
  """The real Mosaic kernel (not interpret mode) inside the loss gradient,
  sharded over a 2-host v5p-16 mesh, compiled by the TPU compiler."""
  import jax
  from flax import nnx
  from poly_epo import checkpointing, logprobs, sharding
  from poly_epo.models import splash
  from tpu_topologies import tpu_devices
  devices = tpu_devices("v5p-16")
  monkeypatch.setattr(splash, "INTERPRET", False)
  mesh = sharding.make_mesh(1, 8, 1, devices=devices)
  cfg = preset("tiny", head_dim=128, attention="splash", dtype="bfloat16")
  graphdef, params, _ = checkpointing.abstract_model(cfg)
  abstract = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      params, sharding.tree_shardings(params, mesh))
  rows = lambda dt: jax.ShapeDtypeStruct(
      (16, 256), dt, sharding=sharding.batch_sharding(mesh, 2))

  def loss(p, tokens, mask):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      lp, _ = logprobs.completion_logprobs(nnx.merge(graphdef, p), tokens,
                                           mask, 64)
      return jnp.sum(lp)
  compiled = jax.jit(jax.grad(loss)).lower(
      abstract, rows(jnp.int32), rows(jnp.bool_)).compile()
  text = compiled.as_text()
  # Forward and both backward kernels of each of the 2 layers.
  assert text.count('custom_call_target="tpu_custom_call"') >= 2 * 3
