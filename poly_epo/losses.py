"""The PPO-clip policy loss and its aggregation modes (DESIGN 3.3).

Per token, with ratio = exp(logp_new - logp_old) and the response's advantage A:

    loss_t = max(-A * ratio, -A * clip(ratio, 1 - eps_low, 1 + eps_high))
    loss_t = min(loss_t, -A * c_dual)            where A < 0 (dual clip)
    (+ kl_coef * k3(ref || new) - entropy_coef * entropy, both off by default)

Aggregations return (numerator, denominator) so that summing both over
micro-batches and dividing once is exactly the full-batch loss:

- `token-mean`: sum over valid tokens / number of valid tokens;
- `seq-mean-token-mean`: sum over sequences of the per-sequence token mean /
  number of sequences;
- `seq-mean-token-sum-norm` (the paper's default, Dr.GRPO): sum over valid
  tokens / (number of sequences x max_len), max_len the maximum response
  length (a constant, default the padded width L).

"Sequences" are rows with at least one valid token (padding rows don't count).
Shapes: B sequences (prompt x sample, flattened), L response tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


class LossParts(NamedTuple):
  """numerator / denominator = loss; metrics are token-means (floats)."""
  numerator: jax.Array
  denominator: jax.Array
  metrics: dict


def ppo_clip_per_token(logp_new_BL, logp_old_BL, adv_BL, *,
                       eps_low: float = 0.2, eps_high: float = 0.28,
                       dual_clip: float | None = 3.0):
  """Clipped surrogate per token (no masking). Returns (loss_BL, ratio_BL)."""
  ratio = jnp.exp(logp_new_BL - logp_old_BL)
  unclipped = -adv_BL * ratio
  clipped = -adv_BL * jnp.clip(ratio, 1.0 - eps_low, 1.0 + eps_high)
  loss = jnp.maximum(unclipped, clipped)
  if dual_clip is not None:
    loss = jnp.where(adv_BL < 0, jnp.minimum(loss, -adv_BL * dual_clip), loss)
  return loss, ratio


def aggregate(loss_BL, mask_BL, mode: str = "seq-mean-token-sum-norm",
              max_len: int | None = None):
  """(numerator, denominator) of a masked per-token loss."""
  mask = mask_BL.astype(jnp.float32)
  loss_BL = jnp.where(mask_BL, loss_BL, 0.0).astype(jnp.float32)
  seq_valid = (jnp.sum(mask, -1) > 0).astype(jnp.float32)
  if mode == "token-mean":
    return jnp.sum(loss_BL), jnp.sum(mask)
  if mode == "seq-mean-token-mean":
    per_seq = jnp.sum(loss_BL, -1) / jnp.maximum(jnp.sum(mask, -1), 1.0)
    return jnp.sum(per_seq * seq_valid), jnp.sum(seq_valid)
  if mode == "seq-mean-token-sum-norm":
    width = loss_BL.shape[-1] if max_len is None else max_len
    return jnp.sum(loss_BL), jnp.sum(seq_valid) * width
  raise ValueError(f"loss aggregation {mode!r}; expected one of "
                   f"{AGGREGATIONS}")


def _token_mean(x, mask):
  m = mask.astype(jnp.float32)
  return jnp.sum(jnp.where(mask, x, 0.0)) / jnp.maximum(jnp.sum(m), 1.0)


def policy_loss(logp_new_BL, logp_old_BL, adv, mask_BL, *,
                eps_low: float = 0.2, eps_high: float = 0.28,
                dual_clip: float | None = 3.0,
                aggregation: str = "seq-mean-token-sum-norm",
                max_len: int | None = None, logp_ref_BL=None,
                kl_coef: float = 0.0, entropy_BL=None,
                entropy_coef: float = 0.0) -> LossParts:
  """PPO-clip loss with diagnostics.

  Args:
    logp_new_BL, logp_old_BL: float [B, L] log-probs of the sampled tokens.
    adv: float [B] per response (broadcast over its tokens) or [B, L].
    mask_BL: bool [B, L] valid completion tokens.
    eps_low, eps_high, dual_clip: clip ranges (dual_clip None disables it).
    aggregation, max_len: see the module docstring.
    logp_ref_BL, kl_coef: optional k3 KL to a reference policy.
    entropy_BL, entropy_coef: per-token entropies (poly_epo.logprobs) for
      the entropy metric and the optional entropy bonus.
  """
  adv_BL = adv[:, None] if adv.ndim == 1 else adv
  adv_BL = jnp.broadcast_to(adv_BL, logp_new_BL.shape).astype(jnp.float32)
  loss, ratio = ppo_clip_per_token(logp_new_BL, logp_old_BL, adv_BL,
                                   eps_low=eps_low, eps_high=eps_high,
                                   dual_clip=dual_clip)
  metrics = {}
  if logp_ref_BL is not None and kl_coef:
    log_r = logp_ref_BL - logp_new_BL
    kl = jnp.exp(log_r) - log_r - 1.0
    loss = loss + kl_coef * kl
    metrics["kl_ref"] = _token_mean(kl, mask_BL)
  if entropy_BL is not None:
    ent = entropy_BL
    metrics["entropy"] = _token_mean(ent, mask_BL)
    if entropy_coef:
      loss = loss - entropy_coef * ent
  num, den = aggregate(loss, mask_BL, aggregation, max_len)
  ratio_sg = jax.lax.stop_gradient(ratio)
  clip_high = (adv_BL > 0) & (ratio_sg > 1.0 + eps_high)
  clip_low = (adv_BL < 0) & (ratio_sg < 1.0 - eps_low)
  dual = ((adv_BL < 0) & (ratio_sg > dual_clip) if dual_clip is not None
          else jnp.zeros_like(clip_low))
  log_ratio = jax.lax.stop_gradient(logp_new_BL - logp_old_BL)
  big = jnp.float32(3e38)
  metrics.update(
      clip_frac_high=_token_mean(clip_high.astype(jnp.float32), mask_BL),
      clip_frac_low=_token_mean(clip_low.astype(jnp.float32), mask_BL),
      clip_frac_dual=_token_mean(dual.astype(jnp.float32), mask_BL),
      ratio_mean=_token_mean(ratio_sg, mask_BL),
      ratio_min=jnp.min(jnp.where(mask_BL, ratio_sg, big)),
      ratio_max=jnp.max(jnp.where(mask_BL, ratio_sg, -big)),
      approx_kl=_token_mean(jnp.exp(log_ratio) - 1.0 - log_ratio, mask_BL),
      num_tokens=jnp.sum(mask_BL.astype(jnp.float32)),
  )
  return LossParts(num, den, metrics)


def config_options(cfg) -> dict:
  """`policy_loss` keyword arguments of a run config: `config.loss`, with
  `config.loss_overrides.<algorithm>` applied."""
  loss = dict(cfg.loss)
  loss.update(dict(cfg.get("loss_overrides", {}).get(cfg.algorithm, {})))
  return dict(eps_low=loss["eps_low"], eps_high=loss["eps_high"],
              dual_clip=loss["dual_clip"] or None,
              aggregation=loss["aggregation"], max_len=cfg.max_new_tokens,
              kl_coef=0.0, entropy_coef=loss["entropy_coef"])
