"""poly_epo.engine.draw: tokens drawn with the softmax's frequencies,
top-k / top-p truncation keeping exactly the tokens they should (checked
against a NumPy sort), masked tokens never drawn, log-probs before
truncation, and the rule's settings checked by name."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo.engine.draw import Sampling, sample_tokens


def test_sample_tokens_never_picks_masked_token():
  logits = jnp.array([[0.0, -jnp.inf, 1.0, -jnp.inf]] * 500)
  keys = jax.random.split(jax.random.key(0), 500)
  tok, logp = sample_tokens(logits, keys, Sampling())
  assert set(np.asarray(tok).tolist()) == {0, 2}
  assert np.isfinite(np.asarray(logp)).all()


@pytest.mark.parametrize("rule", [Sampling(), Sampling(temperature=0.5),
                                  Sampling(top_k=3), Sampling(top_p=0.6)])
def test_frequencies_and_logprobs(rule):
  n = 20000
  logits = np.log(np.array([0.4, 0.25, 0.15, 0.1, 0.06, 0.04]))
  keys = jax.random.split(jax.random.key(1), n)
  tok, logp = sample_tokens(jnp.asarray(np.tile(logits, (n, 1))), keys,
                            rule)
  scaled = logits / rule.temperature
  p = np.exp(scaled - scaled.max())
  p /= p.sum()
  # The truncated distribution, by a NumPy sort: top-k tokens, or the
  # fewest most likely tokens whose mass reaches top_p.
  keep = np.ones(6, bool)
  order = np.argsort(-p)
  if rule.top_k:
    keep[order[rule.top_k:]] = False
  if rule.top_p < 1:
    before = np.cumsum(p[order]) - p[order]
    keep[order[before >= rule.top_p]] = False
  q = np.where(keep, p, 0) / np.where(keep, p, 0).sum()
  freq = np.bincount(np.asarray(tok), minlength=6) / n
  np.testing.assert_allclose(freq, q, atol=0.012)
  # Log-probs are the untruncated distribution's at the temperature.
  np.testing.assert_allclose(np.asarray(logp), np.log(p)[np.asarray(tok)],
                             rtol=1e-5, atol=1e-6)


def test_greedy_and_bad_rules():
  logits = jnp.array([[0.1, 2.0, -1.0]])
  tok, _ = sample_tokens(logits, jax.random.split(jax.random.key(0), 1),
                         Sampling(temperature=0.0))
  assert int(tok[0]) == 1
  for rule, field in ((Sampling(top_p=1.5), "top_p"),
                      (Sampling(top_k=-1), "top_k"),
                      (Sampling(temperature=-0.1), "temperature")):
    with pytest.raises(ValueError, match=field):
      rule.check()
