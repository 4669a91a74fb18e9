"""poly_epo.sharding: mesh errors and partitioning rules."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from poly_epo import sharding
from poly_epo.models import init_model, preset


def test_mesh_must_match_device_count():
  mesh = sharding.make_mesh(2, 2, 2)
  assert dict(mesh.shape) == {"data": 2, "fsdp": 2, "tensor": 2}
  with pytest.raises(ValueError, match=r"config\.mesh.*8 devices"):
    sharding.make_mesh(2, 2, 1)
  with pytest.raises(ValueError, match=r"config\.mesh\.tensor=0"):
    sharding.make_mesh(8, 1, 0)


def test_param_rules_and_indivisible_fallback():
  mesh = sharding.make_mesh(2, 2, 2)
  model = init_model(preset("tiny", vocab_size=37))  # 37: odd vocab.
  _, params = nnx.split(model, nnx.Param)
  specs = {jax.tree_util.keystr(p): s.spec for p, s in
           jax.tree_util.tree_leaves_with_path(
               sharding.tree_shardings(params, mesh))}
  assert specs["['layers'][0]['mlp']['gate_up_proj'].value"] == P(
      "fsdp", None, "tensor")
  assert specs["['layers'][0]['attn']['qkv_proj'].value"] == P(
      "fsdp", "tensor", None, None)
  assert specs["['embed'].value"] == P(None, "fsdp")  # 37 % 2 != 0.
  assert specs["['final_norm']['weight'].value"] == P()
  assert sharding.batch_sharding(mesh, 3).spec == P(("data", "fsdp"), None,
                                                    None)


@pytest.mark.parametrize("shape", [(1, 8, 1), (1, 2, 4), (2, 2, 2)])
def test_every_qwen3_4b_param_gets_a_dividing_spec(shape):
  from poly_epo import checkpointing
  mesh = sharding.make_mesh(*shape)
  _, params, _ = checkpointing.abstract_model(preset("qwen3-4b"))
  shardings = sharding.tree_shardings(params, mesh)
  n_sharded = 0
  for leaf, sh in zip(jax.tree.leaves(params), jax.tree.leaves(shardings)):
    assert len(sh.spec) <= leaf.ndim
    for dim, axis in zip(leaf.shape, sh.spec):
      if axis is not None:
        names = axis if isinstance(axis, tuple) else (axis,)
        size = 1
        for a in names:
          size *= mesh.shape[a]
        assert dim % size == 0, (leaf.shape, sh.spec)
    n_sharded += any(a is not None for a in sh.spec)
  # Every matrix (embedding, 36 x (qkv, o, gate_up, down)) is sharded.
  assert n_sharded == 1 + 36 * 4


def test_load_hf_on_an_8_device_mesh_equals_single_device(tmp_path):
  from hf_fixtures import make_hf_model, save_hf_model
  from poly_epo.models import load_hf
  path = save_hf_model(make_hf_model("qwen3"), str(tmp_path / "q3"))
  mesh = sharding.make_mesh(2, 2, 2)
  one = load_hf(path)
  many = load_hf(path, mesh=mesh, param_dtype="float32", dtype="float32")
  a = nnx.state(one, nnx.Param)
  b = nnx.state(many, nnx.Param)
  specs = []
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert np.array_equal(np.asarray(x), np.asarray(y))
    specs.append(y.sharding.spec)
  assert P("fsdp", "tensor", None, None) in specs  # qkv really is sharded.
  bf = load_hf(path, mesh=mesh, dtype="bfloat16", param_dtype="float32")
  assert bf.cfg.dtype == "bfloat16"
  assert jax.tree.leaves(nnx.state(bf, nnx.Param))[0].dtype == np.float32


# Mesh shapes per slice: 1-D fsdp, data = hosts, data = "the rest", and
# tensor parallelism within a host.
def _shapes(n, procs):
  return [(1, n, 1), (procs, n // procs, 1), (0, 4, 1), (1, n // 2, 2),
          (0, 2, 2), (2, n // 8, 4)]


@pytest.mark.parametrize("name", list(__import__("tpu_topologies").SLICES))
def test_meshes_are_process_major_on_real_tpu_slices(name):
  from tpu_topologies import tpu_devices
  from poly_epo import distributed
  devices = tpu_devices(name)
  n, procs = len(devices), len({d.process_index for d in devices})
  assert procs > 1
  for shape in _shapes(n, procs):
    mesh = sharding.make_mesh(*shape, devices=devices)
    rows = 4 * n
    blocks = sharding.process_row_blocks(mesh, rows)
    # Independent check: walk the rows; each process owns one run of them.
    owner = [None] * rows
    for dev, idx in sharding.batch_sharding(mesh, 1).devices_indices_map(
        (rows,)).items():
      for r in range(*idx[0].indices(rows)):
        assert owner[r] in (None, dev.process_index)
        owner[r] = dev.process_index
    runs = [p for i, p in enumerate(owner) if i == 0 or owner[i - 1] != p]
    assert runs == sorted(set(owner)) == list(range(procs)), (shape, runs)
    assert blocks[0][0] == 0 and blocks[procs - 1][1] == rows
    # trainer.setup's check passes for a step of 2 prompts per process.
    assert distributed.prompt_blocks(mesh, 2 * procs, 8)[1] == (2, 4)
    # Tensor groups are chips of one host.
    for group in mesh.devices.reshape(-1, mesh.shape["tensor"]):
      assert len({d.process_index for d in group}) == 1


def test_jax_make_mesh_order_is_not_process_major_where_ours_is():
  """The failure this guards against: physical order on v5p-16."""
  from tpu_topologies import tpu_devices
  devices = tpu_devices("v5p-16")
  physical = jax.make_mesh((1, 8, 1), sharding.AXES, devices=list(devices))
  with pytest.raises(ValueError, match="process-major|process order"):
    sharding.process_row_blocks(physical, 32)
  sharding.process_row_blocks(sharding.make_mesh(1, 8, 1, devices=devices),
                              32)


def test_tensor_groups_may_not_span_hosts():
  from tpu_topologies import tpu_devices
  with pytest.raises(ValueError, match=r"mesh\.tensor=8"):
    sharding.make_mesh(1, 1, 8, devices=tpu_devices("v5p-16"))


def test_relayout_jit_is_built_once():
  mesh = sharding.make_mesh(2, 2, 2)
  a = sharding._relayout(sharding.batch_sharding(mesh, 2))
  assert sharding._relayout(sharding.batch_sharding(mesh, 2)) is a


def test_decode_layout_drops_fsdp_and_keeps_tensor():
  """The sampler's weights: whole on every batch shard, split over tensor
  where the training layout splits them."""
  mesh = sharding.make_mesh(2, 2, 2)
  _, params = nnx.split(init_model(preset("tiny"), seed=0), nnx.Param)
  train = jax.tree.leaves(sharding.tree_shardings(params, mesh))
  dec = jax.tree.leaves(sharding.decode_shardings(params, mesh))
  assert any("fsdp" in s.spec for s in train)
  for t, d in zip(train, dec):
    assert "fsdp" not in d.spec
    assert [a if a != "fsdp" else None for a in t.spec] == list(d.spec)
