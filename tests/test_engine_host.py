"""poly_epo.engine.host: `run` drives the device loop segment by segment;
every prompt is reported to `on_done` once with its final tokens, the
returned log-probs equal a full forward pass over the sampled tokens (not
the engine's KV-cache path), the counters agree with the outputs, and a
batch that does not split over the devices is refused by name."""

import math

import jax
import numpy as np
import pytest
from flax import nnx

from poly_epo import sampling, sharding
from poly_epo.engine import host, settings
from poly_epo.models import init_model, preset

EOS, K, L = 2, 3, 20


@pytest.fixture(scope="module")
def model():
  return init_model(preset("tiny", vocab_size=8), seed=3)


def _prompts(b=6, p=5):
  rs = np.random.RandomState(1)
  tokens = rs.randint(3, 8, (b, p)).astype(np.int32)
  mask = np.arange(p)[None] >= rs.randint(0, p, b)[:, None]  # Left-padded.
  return np.where(mask, tokens, 0), mask


def _settings(**kw):
  return settings.make(num_samples=K, max_new_tokens=L, eos_id=EOS, pad_id=0,
                       engine="continuous", **kw)


def test_run_reports_each_prompt_once_with_full_forward_logprobs(model):
  tokens, mask = _prompts()
  graphdef, state = nnx.split(model)
  keys = np.asarray(jax.random.key_data(jax.random.split(jax.random.key(5),
                                                         len(tokens))))
  calls = []
  out = host.run(
      graphdef, state, tokens, mask, keys, slots=4 * K,
      settings=_settings(segment_steps=3, narrow="on"),
      on_done=lambda i, t, m: calls.append((i, t, m)))
  b = len(tokens)
  assert out.tokens.shape == (b, K, L) and out.mask.shape == (b, K, L)
  seen = np.concatenate([i for i, _, _ in calls])
  assert sorted(seen.tolist()) == list(range(b))  # Each prompt once.
  for idx, tok, msk in calls:  # What was reported is what is returned.
    np.testing.assert_array_equal(tok, out.tokens[idx])
    np.testing.assert_array_equal(msk, out.mask[idx])
  # Lengths are ragged, and a row ends at its first EOS.
  assert out.lengths.min() < L // 2 and out.lengths.max() == L
  for row, n in zip(out.tokens.reshape(-1, L), out.lengths.ravel()):
    assert EOS not in row[:n - 1]
  # Log-probs of the drawn tokens: a teacher-forced full forward pass.
  rep = lambda x: np.repeat(x, K, 0)
  want = sampling.completion_logprobs(
      model, rep(tokens), rep(mask), out.tokens.reshape(-1, L),
      out.mask.reshape(-1, L))
  np.testing.assert_allclose(out.logprobs.reshape(-1, L), np.asarray(want),
                             atol=1e-5)
  # Counters: one token per busy row-step (the first comes from the
  # prefill), a narrowed tail, a host round trip per 3 decode steps.
  s = out.stats
  assert s["busy_steps"] == int(out.lengths.sum()) - b * K
  assert s["busy_steps"] <= s["slot_steps"] < s["steps"] * s["slots"]
  assert s["segments"] == math.ceil(s["steps"] / 3)


def test_a_batch_that_does_not_split_over_the_devices_is_refused(model):
  tokens, mask = _prompts(b=6)
  graphdef, state = nnx.split(model)
  mesh = sharding.make_mesh(1, 8, 1)
  with pytest.raises(ValueError, match="6 prompts do not split over 8"):
    host.run(graphdef, state, tokens, mask, np.zeros((6, 2), np.uint32),
             mesh=mesh, settings=_settings())
