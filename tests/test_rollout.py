"""poly_epo.rollout: chunking, meshes and padding change no sample; the
compute-dtype cast happens once and keeps shardings."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from engine_helpers import run_rollout
from poly_epo import rollout, sampling, sharding
from poly_epo.models import init_model, preset


@pytest.fixture(scope="module")
def policy():
  model = init_model(preset("tiny", vocab_size=31), seed=3)
  return nnx.split(model, nnx.Param, ...)


def _prompts(b=6, p=7, seed=0):
  rs = np.random.RandomState(seed)
  tokens = rs.randint(3, 31, (b, p)).astype(np.int32)
  mask = np.ones((b, p), bool)
  for i in range(b):
    mask[i, :i % 4] = False  # Left padding of various widths.
  tokens[~mask] = 0
  return tokens, mask


def _run(policy, chunk, mesh=None, **kw):
  graphdef, params, rest = policy
  tokens, mask = _prompts()
  if mesh is not None:
    params = jax.device_put(params, sharding.tree_shardings(params, mesh))
  return run_rollout((graphdef, params, rest), tokens, mask, mesh=mesh,
                     seed=5, num_samples=3, max_new_tokens=9, eos_id=2,
                     pad_id=0, chunk_prompts=chunk, **kw)


@pytest.mark.parametrize("chunk", [1, 4, 5])
def test_chunked_rollout_equals_unchunked(policy, chunk):
  full = _run(policy, 0)
  got = _run(policy, chunk)
  np.testing.assert_array_equal(got.tokens, full.tokens)
  np.testing.assert_array_equal(got.mask, full.mask)
  np.testing.assert_allclose(got.logprobs, full.logprobs, atol=1e-6)
  assert full.tokens.shape == (6, 3, 9)


def test_rollout_equals_generate_with_the_same_keys(policy):
  graphdef, params, rest = policy
  tokens, mask = _prompts()
  ref = sampling.generate(nnx.merge(graphdef, params, rest), tokens, mask,
                          num_samples=3, max_new_tokens=9, eos_id=2,
                          rng=jax.random.key(5))
  got = _run(policy, 4)
  np.testing.assert_array_equal(got.tokens, np.asarray(ref.tokens))


def test_rollout_on_a_mesh_equals_one_device(policy):
  mesh = sharding.make_mesh(2, 2, 2)
  full = _run(policy, 0)
  got = _run(policy, 4, mesh=mesh)  # 4 prompts x 3 rows over 4 batch shards.
  np.testing.assert_array_equal(got.tokens, full.tokens)
  np.testing.assert_allclose(got.logprobs, full.logprobs, atol=1e-5)


def test_compute_dtype_cast_once_keeps_shardings(policy):
  _, params, _ = policy
  mesh = sharding.make_mesh(2, 2, 2)
  sharded = jax.device_put(params, sharding.tree_shardings(params, mesh))
  cast = rollout.cast_params(sharded, "bfloat16")
  for a, b in zip(jax.tree.leaves(sharded), jax.tree.leaves(cast)):
    assert b.dtype == jnp.bfloat16
    assert a.sharding.is_equivalent_to(b.sharding, a.ndim)
  assert rollout.cast_params(cast, "bfloat16") is cast
  out = _run(policy, 3, compute_dtype="bfloat16")
  assert out.tokens.shape == (6, 3, 9) and np.isfinite(out.logprobs).all()
