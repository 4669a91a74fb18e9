"""poly_epo.sampling.generate against full forward passes (the KV-cache-free
reference), exact distributions, and batch invariance."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo.models import init_model, preset
from poly_epo.sampling import completion_logprobs, generate

VOCAB = 24


@pytest.fixture(scope="module")
def model():
  # Random init: logits are far from uniform (the tied embedding favours
  # repeating tokens) yet samples still vary, so a wrong temperature or an
  # off-by-one position shows up in every check.
  return init_model(preset("tiny", vocab_size=VOCAB, num_layers=2), seed=1)


def _prompts(lengths, width=None, seed=0):
  width = width or max(lengths)
  rs = np.random.RandomState(seed)
  tokens = np.zeros((len(lengths), width), np.int32)
  mask = np.zeros((len(lengths), width), bool)
  for i, n in enumerate(lengths):
    if n:
      tokens[i, width - n:] = rs.randint(3, VOCAB, n)
      mask[i, width - n:] = True
  return jnp.asarray(tokens), jnp.asarray(mask)


def _flat(x):
  return x.reshape((-1,) + x.shape[2:])


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_logprobs_equal_full_forward(model, temperature):
  tokens, mask = _prompts([7, 3, 1, 5])
  k = 3
  out = generate(model, tokens, mask, num_samples=k, max_new_tokens=9,
                 temperature=temperature, eos_id=None, rng=jax.random.key(0))
  assert out.tokens.shape == (4, k, 9) and out.lengths.shape == (4, k)
  ref = completion_logprobs(model, jnp.repeat(tokens, k, 0),
                            jnp.repeat(mask, k, 0), _flat(out.tokens),
                            _flat(out.mask), temperature=temperature)
  np.testing.assert_allclose(np.asarray(_flat(out.logprobs)), np.asarray(ref),
                             atol=1e-4)
  assert bool(jnp.all(out.mask))  # EOS disabled: every token is valid.


def test_greedy_equals_stepwise_argmax(model):
  tokens, mask = _prompts([6, 2, 4])
  steps = 7
  out = generate(model, tokens, mask, num_samples=2, max_new_tokens=steps,
                 temperature=0.0, eos_id=None, rng=jax.random.key(3))
  p = tokens.shape[1]
  # Full forward over the growing sequence; right padding does not change a
  # causal model's earlier logits, so one fixed shape (one compile) serves.
  seq = np.concatenate([np.asarray(tokens), np.zeros((3, steps), np.int32)], 1)
  seq_mask = np.concatenate([np.asarray(mask), np.zeros((3, steps), bool)], 1)
  forward = jax.jit(lambda t, m: model(t, None, m))
  for t in range(steps):
    logits = forward(jnp.asarray(seq), jnp.asarray(seq_mask))
    seq[:, p + t] = np.asarray(jnp.argmax(logits[:, p + t - 1], -1))
    seq_mask[:, p + t] = True
  expected = seq[:, p:]
  for j in range(2):
    np.testing.assert_array_equal(np.asarray(out.tokens[:, j]), expected)
  topk1 = generate(model, tokens, mask, num_samples=2, max_new_tokens=steps,
                   top_k=1, eos_id=None, rng=jax.random.key(4))
  np.testing.assert_array_equal(np.asarray(topk1.tokens[:, 0]), expected)


def test_top_k_and_top_p_stay_in_allowed_set(model):
  tokens, mask = _prompts([5, 2])
  k, steps = 16, 6
  for kw in (dict(top_k=3), dict(top_p=0.6), dict(top_k=5, top_p=0.8)):
    out = generate(model, tokens, mask, num_samples=k, max_new_tokens=steps,
                   temperature=1.3, eos_id=None, rng=jax.random.key(5), **kw)
    full = jnp.concatenate([jnp.repeat(tokens, k, 0), _flat(out.tokens)], 1)
    fmask = jnp.concatenate([jnp.repeat(mask, k, 0), _flat(out.mask)], 1)
    logits = np.asarray(model(full, None, fmask))[:, tokens.shape[1] - 1:-1]
    logits = logits / 1.3
    sampled = np.asarray(_flat(out.tokens))
    for row in range(sampled.shape[0]):
      for t in range(steps):
        lg = logits[row, t]
        order = np.argsort(-lg)
        allowed = order[:kw.get("top_k", VOCAB) or VOCAB]
        if "top_p" in kw:
          kept = lg[allowed]
          probs = np.exp(kept - kept.max())
          probs /= probs.sum()
          before = np.cumsum(probs) - probs
          allowed = allowed[before < kw["top_p"]]
        assert sampled[row, t] in set(allowed.tolist()), (kw, row, t)


def _softmax(x):
  e = np.exp(x - x.max())
  return e / e.sum()


def test_first_token_distribution_matches_softmax():
  tokens, mask = _prompts([4])
  temperature, n = 0.6, 6000
  model = init_model(preset("tiny", vocab_size=VOCAB, num_layers=2), seed=1)
  base = model.embed[...]
  for scale in (0.25, 0.5, 0.75, 1.0, 1.5, 2.0):  # Spread-out yet peaked.
    model.embed[...] = base * scale
    logits = np.asarray(model(tokens, None, mask))[0, -1].astype(np.float64)
    if 0.3 < _softmax(logits / temperature).max() < 0.7:
      break
  assert 0.3 < _softmax(logits / temperature).max() < 0.7
  out = generate(model, tokens, mask, num_samples=n, max_new_tokens=1,
                 temperature=temperature, eos_id=None, rng=jax.random.key(7))
  counts = np.bincount(np.asarray(out.tokens[0, :, 0]), minlength=VOCAB)
  empirical = counts / n
  softmax = _softmax
  tv_right = 0.5 * np.abs(empirical - softmax(logits / temperature)).sum()
  tv_wrong = 0.5 * np.abs(empirical - softmax(logits)).sum()
  assert tv_right < 0.03, tv_right
  assert tv_wrong > 2 * tv_right + 0.02, (tv_right, tv_wrong)


def test_eos_masks_and_rows_stop_independently(model):
  tokens, mask = _prompts([5, 3, 6])
  # Pick as EOS the token the model most often emits, so rows hit it early.
  probe = generate(model, tokens, mask, num_samples=8, max_new_tokens=12,
                   eos_id=None, rng=jax.random.key(11))
  eos = int(np.bincount(np.asarray(probe.tokens).ravel()).argmax())
  out = generate(model, tokens, mask, num_samples=8, max_new_tokens=12,
                 eos_id=eos, rng=jax.random.key(11), pad_id=0)
  toks, m = np.asarray(out.tokens), np.asarray(out.mask)
  lengths = np.asarray(out.lengths)
  assert len(set(lengths.ravel().tolist())) > 1  # Rows stop independently.
  for b in range(3):
    for j in range(8):
      row, valid = toks[b, j], m[b, j]
      hits = np.where(row == eos)[0]
      end = hits[0] + 1 if len(hits) else 12
      assert valid[:end].all() and not valid[end:].any()
      assert lengths[b, j] == end
      assert (row[end:] == 0).all()
      assert (np.asarray(out.logprobs[b, j])[end:] == 0).all()
  # Before each row's EOS the draws are the same as without EOS stopping.
  np.testing.assert_array_equal(np.where(m, toks, -1),
                                np.where(m, np.asarray(probe.tokens), -1))


def test_batch_padding_and_width_invariance(model):
  lengths = [6, 2, 4]
  tokens, mask = _prompts(lengths, width=8)
  keys = jax.random.split(jax.random.key(21), 3)
  out = generate(model, tokens, mask, num_samples=3, max_new_tokens=8,
                 eos_id=5, rng=keys)
  # A padding row (no real token) beside them changes nothing, makes no NaN.
  pad_t = jnp.concatenate([tokens, jnp.zeros((1, 8), jnp.int32)])
  pad_m = jnp.concatenate([mask, jnp.zeros((1, 8), bool)])
  pad_keys = jnp.concatenate([keys, jax.random.split(jax.random.key(9), 1)])
  padded = generate(model, pad_t, pad_m, num_samples=3, max_new_tokens=8,
                    eos_id=5, rng=pad_keys)
  assert np.isfinite(np.asarray(padded.logprobs)).all()
  np.testing.assert_array_equal(np.asarray(padded.tokens[:3]),
                                np.asarray(out.tokens))
  for i, n in enumerate(lengths):  # Each prompt alone, at its own width.
    t1, m1 = tokens[i:i + 1, 8 - n:], mask[i:i + 1, 8 - n:]
    alone = generate(model, t1, m1, num_samples=3, max_new_tokens=8,
                     eos_id=5, rng=keys[i:i + 1])
    np.testing.assert_array_equal(np.asarray(alone.tokens[0]),
                                  np.asarray(out.tokens[i]))
    np.testing.assert_allclose(np.asarray(alone.logprobs[0]),
                               np.asarray(out.logprobs[i]), atol=1e-5)


def test_same_key_same_samples_and_samples_differ(model):
  tokens, mask = _prompts([4, 4])
  a = generate(model, tokens, mask, num_samples=4, max_new_tokens=6,
               eos_id=None, rng=jax.random.key(2))
  b = generate(model, tokens, mask, num_samples=4, max_new_tokens=6,
               eos_id=None, rng=jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
  assert len({tuple(r) for r in np.asarray(a.tokens[0]).tolist()}) > 1


def test_bad_arguments_raise(model):
  tokens, mask = _prompts([3])
  with pytest.raises(ValueError, match="prompt_mask"):
    generate(model, tokens, mask[:, :2], num_samples=1, max_new_tokens=2,
             eos_id=None, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="top_p"):
    generate(model, tokens, mask, num_samples=1, max_new_tokens=2, top_p=0.0,
             eos_id=None, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="eos_id"):
    generate(model, tokens, mask, num_samples=1, max_new_tokens=2,
             eos_id=VOCAB + 5, rng=jax.random.key(0))
  with pytest.raises(ValueError, match="keys"):
    generate(model, tokens, mask, num_samples=1, max_new_tokens=2,
             eos_id=None, rng=jax.random.split(jax.random.key(0), 4))
