"""The engine's device loop: decode slots, each row packed from slot 0, refilled on
device from a queue of prompts.

Layout. A device holds S decode slots; slot s owns a cache row of C slots
(`k [S, K, C, H]`, `v [S, K, C, H]` per layer; `layouts.py`) holding one sequence packed
from slot 0: its prompt (no padding before it) and then its response. Row
r = b * k + j (prompt b, sample j) is decoded in whichever slot is free.

Schedule. `engine="static"`: every prompt of the call is inserted at once
(S = B * k) and the loop runs until the last row ends: lock-step decoding,
the behaviour the project always had. `engine="continuous"`: S slots; the
first S // k prompts are inserted, and inside the same on-device
`while_loop`, whenever k * `refill` slots are free, the next `refill`
prompts of the queue are prefilled once and inserted into k slots each. The
loop stops every `segment_steps` steps so the host can hand finished prompts
to the scorer (`on_done`), then carries on. Narrowing tail (`spec.widths`,
continuous only): once the queue is empty and the busy rows fit half the
slots, they move to the first slots and the loop carries on decoding only
those (halving again as rows end), since on CPU every decoded slot costs.

Same tokens, whatever the schedule: the t-th token of sample j of prompt b
is drawn with `fold_in(fold_in(prompt_key_b, j), t)` from logits that depend
only on that row's tokens (decode attention is exact under any window:
`kernels/dense.py`). Slot counts, refill sizes, chunking and
process counts therefore change no token (tests/test_engine_loop.py).

Cache. `cache="contiguous"`: the layout above. `cache="paged"`: per layer
a pool of pages shared by the device's slots, a page table per slot, a
prompt's full pages held once for its k samples, pages handed out when a
prompt is admitted and returned as each sample ends (`layouts.Paged`, `allocator.py`);
a refill waits for free pages as it waits for free slots. Same tokens.

On a mesh each device runs its own loop (`shard_map` over the batch axes)
over its block of prompts and slots, with the sampler's weights replicated
over those axes: no collective over data/fsdp runs while decoding.

The host side (segments, `on_done`, this process's rows, the counters) is
`host.run`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import PartitionSpec as P

from poly_epo import sharding
from poly_epo.engine.draw import draw
from poly_epo.engine.layouts import PageState, free_slots, layout_of
from poly_epo.engine.spec import Spec
from poly_epo.models.transformer import init_cache, rope_table


class Consts(NamedTuple):
  """A device's prompt queue: prompts_BP packed from slot 0 (int32 [B, P]),
  plen_B int32 prompt lengths (0: an empty padding prompt), keys_B uint32
  [B, 2] per-prompt key data."""
  prompts_BP: jax.Array
  plen_B: jax.Array
  keys_B: jax.Array


class State(NamedTuple):
  """Carry of the decode loop on one device (S slots, B prompts, k samples,
  R = B * k rows, L new tokens). Scalars are [1] arrays (one per device)."""
  k: tuple  # per layer: the layout's keys (`layouts.py`)
  v: tuple  # per layer: the layout's values
  pages: PageState | None  # the paged layout's tables and counts
  row_S: jax.Array  # int32 row decoded in the slot, -1 = free
  t_S: jax.Array  # int32 index of the next token to sample
  token_S: jax.Array  # int32 last sampled token (written at slot plen + t-1)
  key_S: jax.Array  # uint32 [S, 2] the row's key data
  plen_S: jax.Array  # int32 prompt length
  next_1: jax.Array  # int32 next prompt of the queue
  steps_1: jax.Array  # int32 decode steps run (all slots, busy or not)
  busy_1: jax.Array  # int32 row-steps of busy slots
  rows_1: jax.Array  # int32 row-steps executed (each step's width)
  tokens_RL: jax.Array  # int32 [R + 1, L] (the last row: writes of free slots)
  logprobs_RL: jax.Array  # float32 [R + 1, L]
  length_R: jax.Array  # int32 [R + 1] tokens so far (EOS included)
  finished_B: jax.Array  # int32 samples finished per prompt


def pack_prompts(tokens_BP, mask_BP):
  """Left- (or any-) padded prompts -> (packed from slot 0, lengths).
  NumPy in, NumPy out: real tokens keep their order."""
  tokens_BP = np.asarray(tokens_BP, np.int32)
  mask_BP = np.asarray(mask_BP, bool)
  plen = mask_BP.sum(1).astype(np.int32)
  order = np.argsort(~mask_BP, axis=1, kind="stable")
  packed = np.take_along_axis(tokens_BP, order, 1)
  packed = np.where(np.arange(tokens_BP.shape[1])[None] < plen[:, None],
                    packed, 0).astype(np.int32)
  return packed, plen


def init_state(cfg, spec: Spec, batch: int) -> State:
  s, length = spec.slots, spec.max_new_tokens
  rows = batch * spec.num_samples
  zi = lambda n: jnp.zeros((n,), jnp.int32)
  k, v, pages = layout_of(spec).init(cfg, spec)
  return State(
      k=k, v=v, pages=pages, row_S=jnp.full((s,), -1, jnp.int32), t_S=zi(s),
      token_S=zi(s), key_S=jnp.zeros((s, 2), jnp.uint32), plen_S=zi(s),
      next_1=zi(1), steps_1=zi(1), busy_1=zi(1), rows_1=zi(1),
      tokens_RL=jnp.full((rows + 1, length), spec.pad_id, jnp.int32),
      logprobs_RL=jnp.zeros((rows + 1, length), jnp.float32),
      length_R=zi(rows + 1), finished_B=zi(batch))


def _sample(spec: Spec, logits_NV, key_data_N2, t_N):
  s = spec.settings
  logits_NV = sharding.replicate_auto(logits_NV)  # No collective in the draw.
  return draw(s.sampling, logits_NV, key_data_N2, t_N, eos_id=s.eos_id,
              max_new_tokens=s.max_new_tokens,
              forced_lengths=s.forced_lengths)


def _write(st: State, row_N, t_N, token_N, logp_N):
  """Record tokens; rows < 0 write to the spare last row."""
  dump = st.tokens_RL.shape[0] - 1
  r = jnp.where(row_N >= 0, row_N, dump)
  return st._replace(
      tokens_RL=st.tokens_RL.at[r, t_N].set(token_N),
      logprobs_RL=st.logprobs_RL.at[r, t_N].set(logp_N),
      length_R=st.length_R.at[r].set(t_N + 1))


def _finish(st: State, spec: Spec, row_N, done_N):
  """Count finished rows per prompt."""
  k = spec.num_samples
  b = jnp.where(done_N & (row_N >= 0), row_N // k, st.finished_B.shape[0])
  return st._replace(finished_B=st.finished_B.at[b].add(1, mode="drop"))


def _ends(spec: Spec, token_N, t_N):
  eos = (token_N == spec.eos_id) if spec.eos_id >= 0 else False
  return eos | (t_N + 1 >= spec.max_new_tokens)


def insert(model, st: State, c: Consts, spec: Spec, count: int,
           rope) -> State:
  """Prefill the next `count` prompts of the queue once and put their k
  samples into the first free slots (the caller checks there is room; the
  layout may admit only a prefix of them). `rope`: `rope_table(cfg,
  spec.cache_len)`, built once per program."""
  k, batch = spec.num_samples, c.plen_B.shape[0]
  layout = layout_of(spec)
  first = st.next_1[0]
  idx_R = first + jnp.arange(count)
  ok_R = idx_R < batch
  safe = jnp.minimum(idx_R, batch - 1)
  toks, plen = c.prompts_BP[safe], jnp.where(ok_R, c.plen_B[safe], 0)
  free_first = free_slots(st.row_S, count * k)
  st, taken_R, table_N = layout.admit(st, spec, plen, ok_R,
                                      free_first.reshape(count, k))
  ok_R = ok_R & taken_R
  p = toks.shape[1]
  cache = init_cache(model.cfg, count, p)
  mask = jnp.arange(p)[None] < plen[:, None]
  hidden, cache = model(toks, None, mask, cache=cache, cache_index=0,
                        rope_table=rope, hidden_only=True)
  last = hidden[jnp.arange(count), jnp.maximum(plen - 1, 0)]
  logits_N = jnp.repeat(model.logits(last[:, None])[:, 0], k, 0)
  # Rows of the new prompts, sample-minor; dropped when not ok / no prompt.
  ok_N = jnp.repeat(ok_R & (plen > 0), k)
  row_N = jnp.where(ok_N, (jnp.repeat(idx_R, k) * k +
                           jnp.tile(jnp.arange(k), count)), -1)
  key_N = jax.vmap(lambda kd, j: jax.random.key_data(jax.random.fold_in(
      jax.random.wrap_key_data(kd), j)))(
          jnp.repeat(c.keys_B[safe], k, 0), jnp.tile(jnp.arange(k), count))
  dest = jnp.where(ok_N, free_first, spec.slots)  # out of range: dropped
  t0 = jnp.zeros_like(row_N)
  token, logp = _sample(spec, logits_N, key_N, t0)
  st = _write(st, row_N, t0, token, logp)
  done = _ends(spec, token, t0)
  st = _finish(st, spec, row_N, done & ok_N)
  put = lambda a, val: a.at[dest].set(val, mode="drop")
  # Finite keys and values only: see `Attention.decode`.
  rep = lambda x: jnp.repeat(jnp.nan_to_num(x, posinf=0.0, neginf=0.0), k, 0)
  st = layout.write_prompt(st, spec, cache, dest, table_N, done, ok_N, rep)
  moved = jnp.sum(taken_R).astype(jnp.int32)  # Candidates consumed.
  return st._replace(
      row_S=put(st.row_S, jnp.where(done, -1, row_N)),
      t_S=put(st.t_S, t0 + 1), token_S=put(st.token_S, token),
      key_S=put(st.key_S, key_N), plen_S=put(st.plen_S, rep(plen)),
      next_1=jnp.minimum(st.next_1 + moved, batch))


def decode_step(model, st: State, spec: Spec, rope, window=None,
                width: int = 0) -> State:
  """Every busy slot decodes one token (`rope` as for `insert`); a row the
  layout makes wait (no page yet) decodes nothing this step. `width`: only
  the first `width` slots are decoded (the busy ones must be there:
  `_compact`); 0 = all."""
  s = spec.slots
  w = width or s
  layout = layout_of(spec)
  busy = st.row_S >= 0
  slot = jnp.where(busy, st.plen_S + st.t_S - 1, 0)
  st, busy = layout.grant(st, spec, busy, slot)
  r = spec.settings
  logits, k, v = model.decode(st.token_S[:w], st.k, st.v, slot[:w], rope,
                              impl=r.attention, block=spec.block,
                              window=window, keys_ch=r.keys_ch,
                              table_NM=layout.tables(st, w),
                              platform=r.platform)
  token, logp = _sample(spec, logits, st.key_S[:w], st.t_S[:w])
  if w < s:  # Slots past the width are free: nothing of theirs is kept.
    token, logp = jnp.pad(token, (0, s - w)), jnp.pad(logp, (0, s - w))
  row = jnp.where(busy, st.row_S, -1)
  st = _write(st, row, st.t_S, token, logp)
  done = busy & _ends(spec, token, st.t_S)
  st = _finish(st, spec, st.row_S, done)
  st = layout.release(st, spec, done)
  return st._replace(
      k=k, v=v, row_S=jnp.where(done, -1, st.row_S),
      t_S=jnp.where(busy, st.t_S + 1, st.t_S),
      token_S=jnp.where(busy, token, st.token_S),
      steps_1=st.steps_1 + 1,
      busy_1=st.busy_1 + jnp.sum(busy).astype(jnp.int32),
      rows_1=st.rows_1 + w)


def _compact(st: State, spec: Spec) -> State:
  """Busy rows moved to the first slots, in slot order (a row's cache,
  page table and counters move with it; tokens are kept by row, so nothing
  a row draws changes)."""
  order = jnp.argsort(st.row_S < 0, stable=True)
  take = lambda x: x[order]
  st = st._replace(
      row_S=take(st.row_S), t_S=take(st.t_S), token_S=take(st.token_S),
      key_S=take(st.key_S), plen_S=take(st.plen_S))
  return layout_of(spec).compact(st, take)


def _loop(model, st: State, c: Consts, spec: Spec) -> State:
  """Up to `segment_steps` decode steps on one device (its own loops).

  Stage 0 decodes all slots and refills them while the queue lasts. With
  `spec.widths` (a narrowing tail) stage i > 0 starts once the queue is
  empty and the busy rows fit `widths[i]` slots: they are compacted into
  the first slots and only those are decoded, each stage a loop of its
  own (one program per width: a `switch` over widths inside one loop made
  each XLA:CPU step slower than decoding every slot).
  A segment that ends mid-stage resumes there: the stages' conditions only
  look at the state."""
  k, batch = spec.num_samples, c.plen_B.shape[0]
  stop = st.steps_1[0] + spec.segment_steps
  rope = rope_table(model.cfg, spec.cache_len)  # Once, not per step.
  widths = spec.widths or (spec.slots,)

  def busy(st):
    return jnp.any(st.row_S >= 0)

  def queued(st):
    return (st.next_1[0] < batch) if spec.refill else jnp.asarray(False)

  def fits(st, i):  # The tail may narrow to widths[i].
    if i >= len(widths):
      return jnp.asarray(False)
    return ~queued(st) & (jnp.sum(st.row_S >= 0) <= widths[i])

  def body(st):
    if not spec.refill:  # The loop's condition: some row is busy.
      return decode_step(model, st, spec, rope)
    room = (jnp.sum(st.row_S < 0) >= k * spec.refill) & \
        layout_of(spec).room(st, c, spec)
    st = jax.lax.cond(queued(st) & room,
                      lambda s: insert(model, s, c, spec, spec.refill, rope),
                      lambda s: s, st)
    return jax.lax.cond(busy(st), lambda s: decode_step(model, s, spec, rope),
                        lambda s: s, st)

  st = jax.lax.while_loop(
      lambda st: (st.steps_1[0] < stop) & (busy(st) | queued(st)) &
      ~fits(st, 1), body, st)

  def top(st):  # Slots up to the last busy one.
    return jnp.max(jnp.where(st.row_S >= 0, jnp.arange(spec.slots) + 1, 0))

  for i in range(1, len(widths)):
    st = jax.lax.cond(fits(st, i) & (top(st) > widths[i]),
                      lambda s: _compact(s, spec), lambda s: s, st)
    st = jax.lax.while_loop(
        lambda st, i=i: (st.steps_1[0] < stop) & busy(st) & fits(st, i) &
        ~fits(st, i + 1),
        functools.partial(decode_step, model, spec=spec, rope=rope,
                          width=widths[i]), st)
  return st


def _begin_local(graphdef, params, c: Consts, spec: Spec) -> State:
  model = nnx.merge(graphdef, params)
  st = init_state(model.cfg, spec, c.plen_B.shape[0])
  if spec.first:
    st = insert(model, st, c, spec, spec.first,
                rope_table(model.cfg, spec.cache_len))
  return _loop(model, st, c, spec)


def _segment_local(graphdef, params, st: State, c: Consts, spec: Spec
                   ) -> State:
  return _loop(nnx.merge(graphdef, params), st, c, spec)


def _per_device(fn, mesh, n_in: int):
  """fn on every device's block of rows (shard_map over the batch axes,
  params replicated over them); fn itself on one device."""
  if mesh is None:
    return fn
  rows = P(sharding.BATCH)
  return jax.shard_map(fn, mesh=mesh, in_specs=(P(),) + (rows,) * n_in,
                       out_specs=rows, axis_names=frozenset(sharding.BATCH),
                       check_vma=False)


def _pending(st: State, c: Consts, spec: Spec, mesh):
  per = c.plen_B.shape[0] // (sharding.batch_shards(mesh) if mesh else 1)
  queued = jnp.any(st.next_1 < per) if spec.refill else False
  return jnp.any(st.row_S >= 0) | queued


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "mesh"))
def begin(graphdef, params, c: Consts, *, spec: Spec, mesh):
  """Fresh state, the first prompts inserted, the first segment decoded.
  Returns (state, whether any device has work left)."""
  st = _per_device(functools.partial(_begin_local, graphdef, spec=spec),
                   mesh, 1)(params, c)
  return st, _pending(st, c, spec, mesh)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "mesh"),
                   donate_argnames=("st",))
def segment(graphdef, params, st: State, c: Consts, *, spec: Spec, mesh):
  """The next segment of every device's loop: (state, work left)."""
  st = _per_device(functools.partial(_segment_local, graphdef, spec=spec),
                   mesh, 2)(params, st, c)
  return st, _pending(st, c, spec, mesh)


# --- Single programs, for the planner's cost model (poly_epo/plan.py) ----

@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "mesh",
                                             "count"),
                   donate_argnames=("st",))
def insert_program(graphdef, params, st: State, c: Consts, *, spec: Spec,
                   mesh, count: int) -> State:
  """One prefill of `count` prompts per device, inserted into its slots."""
  def fn(p, s, cc):
    model = nnx.merge(graphdef, p)
    return insert(model, s, cc, spec, count,
                  rope_table(model.cfg, spec.cache_len))
  return _per_device(fn, mesh, 2)(params, st, c)


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "mesh",
                                             "window"),
                   donate_argnames=("st",))
def step_program(graphdef, params, st: State, *, spec: Spec, mesh,
                 window: int) -> State:
  """One decode step of every device's slots reading a static `window`."""
  def fn(p, s):
    model = nnx.merge(graphdef, p)
    return decode_step(model, s, spec, rope_table(model.cfg, spec.cache_len),
                       window)
  return _per_device(fn, mesh, 1)(params, st)
