"""poly_epo.sharding: mesh errors and partitioning rules."""

import jax
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
