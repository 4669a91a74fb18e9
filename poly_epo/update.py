"""The policy update: one jitted, sharded function over a whole rollout batch.

The rollout's S = B * N sequences are split into `num_minibatches` optimizer
steps (strided: row s is in minibatch s % mini, so each device's rows feed
every micro-batch with no resharding), each accumulated
exactly over `num_microbatches` micro-batches: the loss numerators' gradients
and the denominators are summed, then divided once (losses.py). A minibatch
whose loss or gradient is not finite is skipped (params and optimizer state
kept) and counted. Old log-probs are the sampler's, or (with
`recompute_old_logprobs`, verl's behaviour and the default when the compute
dtype is not float32) recomputed by the training model before the first
minibatch: in f32 the two agree to ~1e-5 (tests/test_sampling.py); in bf16
the sampler's cast weights and cache drift further.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from poly_epo import logprobs, losses, sharding


class RolloutBatch(NamedTuple):
  """S sequences of T = P + L tokens (left-padded prompt, then completion).

  tokens_ST int32, attn_ST bool (real tokens), mask_SL bool (valid completion
  tokens), old_logp_SL float32, adv_S float32.
  """
  tokens_ST: jax.Array
  attn_ST: jax.Array
  mask_SL: jax.Array
  old_logp_SL: jax.Array
  adv_S: jax.Array


class PackedBatch(NamedTuple):
  """The same S sequences packed end to end (poly_epo/packing.py): rows of
  W tokens with segment ids and positions, `index_SL` the response tokens'
  places in each device's rows; mask / old log-probs / advantages as in
  `RolloutBatch`."""
  tokens_RW: jax.Array
  segment_RW: jax.Array
  position_RW: jax.Array
  index_SL: jax.Array
  mask_SL: jax.Array
  old_logp_SL: jax.Array
  adv_S: jax.Array


def make_optimizer(lr: float, *, weight_decay: float, grad_clip: float,
                   warmup_steps: int = 0, total_steps: int = 1,
                   schedule: str = "constant") -> optax.GradientTransformation:
  """AdamW with grad-norm clipping and a constant or cosine lr schedule."""
  if schedule == "constant":
    sched = optax.join_schedules(
        [optax.linear_schedule(0.0, lr, max(warmup_steps, 1)),
         optax.constant_schedule(lr)], [max(warmup_steps, 1)]) \
        if warmup_steps else optax.constant_schedule(lr)
  elif schedule == "cosine":
    sched = optax.warmup_cosine_decay_schedule(0.0, lr, max(warmup_steps, 1),
                                               max(total_steps, 2), lr * 0.1)
  else:
    raise ValueError(f"config.lr_schedule={schedule!r}: 'constant' or 'cosine'")
  return optax.chain(optax.clip_by_global_norm(grad_clip),
                     optax.adamw(sched, weight_decay=weight_decay))


_MIN_METRICS = ("ratio_min",)
_MAX_METRICS = ("ratio_max",)


def _reduce_metrics(metrics: dict) -> dict:
  out = {}
  for k, v in metrics.items():
    if k in _MIN_METRICS:
      out[k] = jnp.min(v)
    elif k in _MAX_METRICS:
      out[k] = jnp.max(v)
    elif k in ("skipped", "num_tokens"):
      out[k] = jnp.sum(v)
    else:
      out[k] = jnp.mean(v)
  return out


def make_update_fn(graphdef, tx, mesh, params_sharding, opt_sharding, *,
                   prompt_len: int, num_minibatches: int = 1,
                   num_microbatches: int = 1, temperature: float = 1.0,
                   loss_options: dict | None = None,
                   recompute_old_logprobs: bool = False,
                   logprob_chunk: int = 0, packing: bool = False):
  """Returns update(params, opt_state, batch) -> (params, opt_state, metrics),
  jitted with explicit shardings and donated params/optimizer state.

  `params` are the f32 master weights; the forward pass computes in the
  model config's `dtype` (weights cast per use, gradients flow back to f32).
  With `recompute_old_logprobs` (verl's behaviour), the old log-probs are
  recomputed by one forward pass of the training model over the rollout,
  micro-batch by micro-batch, before the first minibatch, so the ratio of
  the first minibatch is exactly 1 whatever precision the sampler used.
  `logprob_chunk` bounds the [S, chunk, V] logits held at once. With
  `packing` the update takes a `PackedBatch` (one forward per packed row;
  the loss on the [S, L] layout as without).
  """
  loss_options = dict(loss_options or {})
  shards = sharding.batch_shards(mesh)

  def forward_logprobs(params, mb):
    model = nnx.merge(graphdef, params)
    if not packing:
      return logprobs.completion_logprobs(
          model, mb.tokens_ST, mb.attn_ST, prompt_len,
          temperature=temperature, chunk=logprob_chunk)
    return logprobs.packed_completion_logprobs(
        model, mb.tokens_RW, mb.segment_RW, mb.position_RW, mb.index_SL,
        shards=shards, temperature=temperature, chunk=logprob_chunk)

  def micro_loss(params, mb):
    logp, ent = forward_logprobs(params, mb)
    parts = losses.policy_loss(logp, mb.old_logp_SL, mb.adv_S, mb.mask_SL,
                               entropy_BL=ent, **loss_options)
    return parts.numerator, (parts.denominator, parts.metrics)

  grad_fn = jax.value_and_grad(micro_loss, has_aux=True)

  def minibatch_step(carry, mb):
    params, opt_state = carry

    def micro(acc, m):
      g_acc, num_acc, den_acc = acc
      (num, (den, met)), g = grad_fn(params, m)
      g_acc = jax.tree.map(jnp.add, g_acc, g)
      return (g_acc, num_acc + num, den_acc + den), met

    zeros = jax.tree.map(jnp.zeros_like, params)
    (g, num, den), mets = jax.lax.scan(micro, (zeros, 0.0, 0.0), mb)
    den = jnp.maximum(den, 1.0)
    g = jax.tree.map(lambda x, p: (x / den).astype(p.dtype), g, params)
    loss = num / den
    gnorm = optax.tree.norm(g)
    ok = jnp.isfinite(loss) & jnp.isfinite(gnorm)
    updates, new_opt = tx.update(g, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    keep = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(ok, a, b), new, old)
    metrics = _reduce_metrics(mets)
    metrics.update(loss=loss, grad_norm=gnorm,
                   skipped=(~ok).astype(jnp.int32))
    return (keep(new_params, params), keep(new_opt, opt_state)), metrics

  def update(params, opt_state, batch: RolloutBatch):
    with jax.sharding.use_abstract_mesh(mesh.abstract_mesh):
      return _update(params, opt_state, batch)

  def _update(params, opt_state, batch):
    def split(x):
      per = x.shape[0] // (num_minibatches * num_microbatches)
      # Row s goes to minibatch s % mini (whatever the micro-batch count):
      # with the rows laid out in contiguous blocks per device, every
      # micro-batch takes its share from every device without moving a row
      # (a contiguous split would replicate the batch to reshard it).
      x = x.reshape((per, num_microbatches, num_minibatches) + x.shape[1:])
      x = jnp.swapaxes(x, 0, 2)
      spec = P(None, None, sharding.BATCH, *([None] * (x.ndim - 3)))
      return jax.lax.with_sharding_constraint(
          x, jax.sharding.NamedSharding(mesh, spec))

    batch = jax.tree.map(split, batch)
    extra = {}
    if recompute_old_logprobs:
      def recompute(mb):
        logp, _ = forward_logprobs(params, mb)
        return jnp.where(mb.mask_SL, logp, 0.0)
      flat = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
      old = jax.lax.map(recompute, flat).reshape(batch.old_logp_SL.shape)
      mask = batch.mask_SL
      extra["sampler_logp_abs_diff"] = jnp.sum(
          jnp.where(mask, jnp.abs(old - batch.old_logp_SL), 0.0)) / \
          jnp.maximum(jnp.sum(mask), 1)
      batch = batch._replace(old_logp_SL=old)
    (params, opt_state), metrics = jax.lax.scan(
        minibatch_step, (params, opt_state), batch)
    metrics = _reduce_metrics(metrics)
    metrics.update(extra)
    return params, opt_state, metrics

  batch_sh = (PackedBatch(*(sharding.batch_sharding(mesh, n)
                            for n in (2, 2, 2, 2, 2, 2, 1))) if packing else
              RolloutBatch(*(sharding.batch_sharding(mesh, n)
                             for n in (2, 2, 2, 2, 1))))
  return jax.jit(update,
                 in_shardings=(params_sharding, opt_sharding, batch_sh),
                 out_shardings=(params_sharding, opt_sharding,
                                sharding.replicated(mesh)),
                 donate_argnums=(0, 1))
