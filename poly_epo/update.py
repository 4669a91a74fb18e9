"""The policy update: one jitted, sharded function over a whole rollout batch.

The rollout's S = B * N sequences are split into `num_minibatches` optimizer
steps (strided: row s is in minibatch s % mini, so each device's rows feed
every micro-batch with no resharding), each accumulated
exactly over `num_microbatches` micro-batches: the loss numerators' gradients
and the denominators are summed, then divided once (losses.py). A minibatch
whose loss, gradient or new weights (params, optimizer state) are not
finite is skipped (params and optimizer state kept) and counted. Old
log-probs are, in this order: the update's own
forward pass, detached, when the rollout batch is one minibatch
(`on_policy`: ratio exactly 1, no extra pass); else recomputed by the
training model before the first minibatch (`recompute_old_logprobs`,
verl's behaviour and the default when the compute dtype is not float32);
else the sampler's. In f32 the sampler's agree with the training model's to
~1e-5 (tests/test_sampling.py). In bf16 even the recomputed ones are not
bit-equal to the first minibatch's forward (another program, other
rounding: ratios 0.95-1.06 were seen), so only the on-policy path makes the
first ratio exactly 1.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import PartitionSpec as P

from poly_epo import logprobs, losses, sharding
from poly_epo.models import shared_prefix as shared_prefix_model


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


class SharedBatch(NamedTuple):
  """The same S = B x N sequences grouped by prompt, each prompt held once
  (`models/shared_prefix.py`): prompt_BP int32 (left-padded), pmask_BP bool,
  tokens_BNL int32 responses, mask_BNL bool valid response tokens,
  old_logp_BNL float32, adv_BN float32."""
  prompt_BP: jax.Array
  pmask_BP: jax.Array
  tokens_BNL: jax.Array
  mask_BNL: jax.Array
  old_logp_BNL: jax.Array
  adv_BN: jax.Array


def layout(cfg, batch_shards: int) -> dict:
  """The update's batch layout and old-log-prob source for a run config
  (`make_update_fn`'s packing / shared_prefix / on_policy /
  recompute_old_logprobs), decided in one place for the trainer, the planner
  and the benchmarks.

  shared_prefix: `config.shared_prefix` on | off | auto (on unless
  `config.packing`, when the prompts split evenly into minibatches,
  micro-batches and batch shards). on_policy: one minibatch per rollout
  batch. recompute: `config.recompute_old_logprobs` (auto: compute dtype not
  float32), never needed on policy.
  """
  groups = cfg.num_minibatches * max(cfg.num_microbatches, 1)
  fits = cfg.prompts_per_step % groups == 0 and \
      (cfg.prompts_per_step // groups) % batch_shards == 0
  mode = cfg.get("shared_prefix", "auto")
  if mode not in ("auto", "on", "off"):
    raise ValueError(f"config.shared_prefix={mode!r}: 'auto', 'on' or 'off'")
  if mode == "on" and (cfg.packing or not fits):
    raise ValueError(
        "config.shared_prefix=on: " + (
            "excludes config.packing" if cfg.packing else
            f"prompts_per_step={cfg.prompts_per_step} must split into "
            f"num_minibatches x num_microbatches = {groups} groups of a "
            f"multiple of the {batch_shards} batch shards"))
  shared = mode == "on" or (mode == "auto" and fits and not cfg.packing)
  on_policy = cfg.num_minibatches == 1
  recompute = cfg.recompute_old_logprobs == "on" or (
      cfg.recompute_old_logprobs == "auto" and cfg.model.dtype != "float32")
  return dict(packing=bool(cfg.packing), shared_prefix=shared,
              on_policy=on_policy, recompute_old_logprobs=recompute)


def build(cfg, graphdef, tx, mesh, params_sharding, opt_sharding, *,
          num_microbatches: int | None = None, dtype: str | None = None):
  """The update function a run config trains with: (update_fn, layout).
  The trainer and the planner both call this, so the planner compiles what
  the trainer runs (`layout`: packing, shared prefix, on-policy, recompute;
  the loss settings; the micro-batching). `num_microbatches` / `dtype`:
  the planner's candidate micro-batching and compute dtype (default: the
  config's)."""
  cfg = cfg.copy_and_resolve_references()
  if num_microbatches is not None:
    cfg.num_microbatches = num_microbatches
  if dtype is not None:
    cfg.model.dtype = dtype
  lay = layout(cfg, sharding.batch_shards(mesh))
  fn = make_update_fn(
      graphdef, tx, mesh, params_sharding, opt_sharding,
      prompt_len=cfg.max_prompt_tokens, num_minibatches=cfg.num_minibatches,
      num_microbatches=cfg.num_microbatches, temperature=cfg.temperature,
      logprob_chunk=cfg.model.logprob_chunk,
      loss_options=losses.config_options(cfg), **lay)
  return fn, lay


def abstract_batch(cfg, lay: dict, mesh):
  """ShapeDtypeStructs (batch-sharded) of one step's update batch in the
  layout `lay` (`layout`): the planner's input. Packed rows are planned at
  their most (a sequence per row: [S, P + L])."""
  bp, n = cfg.prompts_per_step, cfg.num_samples
  p, length = cfg.max_prompt_tokens, cfg.max_new_tokens
  s, t = bp * n, p + length
  b = lambda shape, dt: jax.ShapeDtypeStruct(
      shape, dt, sharding=sharding.batch_sharding(mesh, len(shape)))
  if lay["shared_prefix"]:
    return SharedBatch(
        b((bp, p), jnp.int32), b((bp, p), jnp.bool_),
        b((bp, n, length), jnp.int32), b((bp, n, length), jnp.bool_),
        b((bp, n, length), jnp.float32), b((bp, n), jnp.float32))
  if lay["packing"]:
    return PackedBatch(
        b((s, t), jnp.int32), b((s, t), jnp.int32), b((s, t), jnp.int32),
        b((s, length), jnp.int32), b((s, length), jnp.bool_),
        b((s, length), jnp.float32), b((s,), jnp.float32))
  return RolloutBatch(b((s, t), jnp.int32), b((s, t), jnp.bool_),
                      b((s, length), jnp.bool_), b((s, length), jnp.float32),
                      b((s,), jnp.float32))


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
    elif k in ("skipped", "skipped_nonfinite_weights", "num_tokens"):
      out[k] = jnp.sum(v)
    else:
      out[k] = jnp.mean(v)
  return out


def all_finite(tree) -> jax.Array:
  """True when every floating leaf of `tree` is finite (a scalar)."""
  leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def make_update_fn(graphdef, tx, mesh, params_sharding, opt_sharding, *,
                   prompt_len: int, num_minibatches: int = 1,
                   num_microbatches: int = 1, temperature: float = 1.0,
                   loss_options: dict | None = None,
                   recompute_old_logprobs: bool = False,
                   logprob_chunk: int = 0, packing: bool = False,
                   shared_prefix: bool = False, on_policy: bool = False,
                   with_parts: bool = False):
  """Returns update(params, opt_state, batch) -> (params, opt_state, metrics),
  jitted with explicit shardings and donated params/optimizer state.

  `params` are the f32 master weights; the forward pass computes in the
  model config's `dtype` (weights cast per use, gradients flow back to f32).
  With `recompute_old_logprobs` (verl's behaviour), the old log-probs are
  recomputed by one forward pass of the training model over the rollout,
  micro-batch by micro-batch, before the first minibatch (the ratio of the
  first minibatch is then 1 up to the rounding of two different programs:
  ~1e-6 in f32, a few percent in bf16).
  `logprob_chunk` bounds the [S, chunk, V] logits held at once. With
  `packing` the update takes a `PackedBatch` (one forward per packed row;
  the loss on the [S, L] layout as without). With `shared_prefix` it takes
  a `SharedBatch` (each prompt's forward once for its N samples; same loss
  and gradients). With `on_policy` (one minibatch, one epoch: the policy
  that sampled is the one being updated) the old log-probs are the forward
  pass's own, detached: the ratio is exactly 1 in any precision and no
  second forward pass runs (TRL does the same); the sampler's log-probs
  only feed the `sampler_logp_abs_diff` diagnostic. `with_parts` also
  returns the step's pieces jitted alone, for `bench train --split`:
  {"forward": (params, one micro-batch) -> (logp, entropy),
   "loss_grad": (params, micro-batch) -> ((numerator, aux), grads),
   "optimizer": (grads, opt_state, params) -> (params, opt_state)}.
  """
  if packing and shared_prefix:
    raise ValueError("config.packing and config.shared_prefix exclude each "
                     "other")
  loss_options = dict(loss_options or {})
  shards = sharding.batch_shards(mesh)
  ent_grad = bool(loss_options.get("entropy_coef", 0.0))

  def forward_logprobs(params, mb):
    model = nnx.merge(graphdef, params)
    if shared_prefix:
      b, n, length = mb.tokens_BNL.shape
      hidden = shared_prefix_model.response_hidden(
          model, mb.prompt_BP, mb.pmask_BP, mb.tokens_BNL, mb.mask_BNL)
      return logprobs.sequence_logprobs(
          hidden.reshape(b * n, length, -1), model.head(),
          mb.tokens_BNL.reshape(b * n, length), temperature=temperature,
          chunk=logprob_chunk, entropy_grad=ent_grad)
    if not packing:
      return logprobs.completion_logprobs(
          model, mb.tokens_ST, mb.attn_ST, prompt_len,
          temperature=temperature, chunk=logprob_chunk,
          entropy_grad=ent_grad)
    return logprobs.packed_completion_logprobs(
        model, mb.tokens_RW, mb.segment_RW, mb.position_RW, mb.index_SL,
        shards=shards, temperature=temperature, chunk=logprob_chunk,
        entropy_grad=ent_grad)

  def flat(mb):
    """(mask_SL, old_logp_SL, adv_S) of any batch layout."""
    if shared_prefix:
      s = mb.adv_BN.size
      return (mb.mask_BNL.reshape(s, -1), mb.old_logp_BNL.reshape(s, -1),
              mb.adv_BN.reshape(s))
    return mb.mask_SL, mb.old_logp_SL, mb.adv_S

  def micro_loss(params, mb):
    logp, ent = forward_logprobs(params, mb)
    mask, sampler_logp, adv = flat(mb)
    old = jax.lax.stop_gradient(logp) if on_policy else sampler_logp
    parts = losses.policy_loss(logp, old, adv, mask, entropy_BL=ent,
                               **loss_options)
    metrics = dict(parts.metrics)
    if on_policy:
      metrics["sampler_logp_abs_diff"] = jnp.sum(jnp.where(
          mask, jnp.abs(jax.lax.stop_gradient(logp) - sampler_logp), 0.0)) \
          / jnp.maximum(jnp.sum(mask), 1)
    return parts.numerator, (parts.denominator, metrics)

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
    # A finite gradient can still overflow the weights (lr 1e38): such an
    # update is skipped too, so non-finite weights are never kept.
    weights_ok = all_finite((new_params, new_opt))
    ok = ok & weights_ok
    keep = lambda new, old: jax.tree.map(
        lambda a, b: jnp.where(ok, a, b), new, old)
    metrics = _reduce_metrics(mets)
    metrics.update(loss=loss, grad_norm=gnorm,
                   skipped=(~ok).astype(jnp.int32),
                   skipped_nonfinite_weights=(~weights_ok).astype(jnp.int32))
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
    if recompute_old_logprobs and not on_policy:
      def recompute(mb):
        logp, _ = forward_logprobs(params, mb)
        return jnp.where(flat(mb)[0], logp, 0.0)
      rows = jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), batch)
      old_field = "old_logp_BNL" if shared_prefix else "old_logp_SL"
      sampler = getattr(batch, old_field)
      old = jax.lax.map(recompute, rows).reshape(sampler.shape)
      mask = batch.mask_BNL if shared_prefix else batch.mask_SL
      extra["sampler_logp_abs_diff"] = jnp.sum(
          jnp.where(mask, jnp.abs(old - sampler), 0.0)) / \
          jnp.maximum(jnp.sum(mask), 1)
      batch = batch._replace(**{old_field: old})
    (params, opt_state), metrics = jax.lax.scan(
        minibatch_step, (params, opt_state), batch)
    metrics = _reduce_metrics(metrics)
    metrics.update(extra)
    return params, opt_state, metrics

  if shared_prefix:
    batch_sh = SharedBatch(*(sharding.batch_sharding(mesh, n)
                             for n in (2, 2, 3, 3, 3, 2)))
  elif packing:
    batch_sh = PackedBatch(*(sharding.batch_sharding(mesh, n)
                             for n in (2, 2, 2, 2, 2, 2, 1)))
  else:
    batch_sh = RolloutBatch(*(sharding.batch_sharding(mesh, n)
                              for n in (2, 2, 2, 2, 1)))
  jitted = jax.jit(update,
                   in_shardings=(params_sharding, opt_sharding, batch_sh),
                   out_shardings=(params_sharding, opt_sharding,
                                  sharding.replicated(mesh)),
                   donate_argnums=(0, 1))
  if not with_parts:
    return jitted

  def optimizer(g, opt_state, params):
    updates, new_opt = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), new_opt
  return jitted, {"forward": jax.jit(forward_logprobs),
                  "loss_grad": jax.jit(grad_fn),
                  "optimizer": jax.jit(optimizer)}
