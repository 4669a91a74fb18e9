"""The rollout's part of `poly_epo.plan`: compile the engine's programs for
the mesh and estimate a step's rollout from their cost, per schedule.

Compiled (abstract shapes, the planner's compiler): one prefill-and-insert
of a static chunk (`prefill_chunk`), one of a continuous refill
(`prefill_refill`), and one decode step of every device's slots at two
static attention windows (the whole cache and half of it). A decode step's
cost is linear in the window it reads (weights and activations, plus KV
bytes x window), so those two fix it at any window.

Estimated by replaying each schedule on the host for a spread of response
lengths (`lengths`: "max" every response at the cap; "uniform" on
[L/20, L]; "capped" 30% at the cap, the rest uniform below; a fixed seed),
each device with its own block of prompts, exactly as the engine decides:

- `static_full`: lock-step chunks reading the whole cache every step until
  the chunk's longest row ends (the sampler before the engine);
- `static`: the same with the window attention (the filled blocks, rounded
  up to a power of two of blocks);
- `continuous`: the engine's slots refilled from the device's queue, each
  step reading the window of its longest busy row, a prefill per refill;
- `continuous_ragged_kernel`: the same schedule if each busy row read only
  its own fill (what a ragged / paged decode kernel does; not built yet, see
  docs/ROLLOUT.md): the step cost at the busy rows' mean fill.

Prompts are taken at their full width `max_prompt_tokens` (no gain counted
from shorter prompts). Reported per schedule: seconds, decode steps, bytes
read per generated token.
"""

from __future__ import annotations

import numpy as np

SPREADS = ("max", "uniform", "capped")


def lengths(spread: str, rows: int, cap: int, seed: int = 0) -> np.ndarray:
  """int [rows] response lengths of a spread (the bench's, by a seed)."""
  if spread not in SPREADS:
    raise ValueError(f"--lengths={spread!r}: one of {SPREADS}")
  rs = np.random.RandomState(seed)
  lo = max(1, cap // 20)
  if spread == "max":
    return np.full(rows, cap)
  if spread == "uniform":
    return rs.randint(lo, cap + 1, rows)
  below = rs.randint(lo, cap, rows)
  return np.where(rs.rand(rows) < 0.3, cap, below)


def compile_programs(mcfg, mesh, cfg, chunk: int, abstract, tree_bytes):
  """(memory per device, compiled programs, specs). `abstract(tree, sh)`
  attaches shardings to ShapeDtypeStructs; `tree_bytes(tree, sh)` counts
  one device's bytes of them (poly_epo/plan.py's)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from poly_epo import engine, sharding
  from poly_epo.models.transformer import Transformer
  k, p, length = cfg.num_samples, cfg.max_prompt_tokens, cfg.max_new_tokens
  d = sharding.batch_shards(mesh)
  chunk_dev = max(chunk // d, 1)
  model = nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, jnp.dtype(mcfg.dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x.dtype), state)
  decode_sh = sharding.decode_shardings(state, mesh)
  params = abstract(state, decode_sh)
  common = dict(prompt_width=p, num_samples=k, max_new_tokens=length,
                attention=_planned(cfg.rollout.attention), eos_id=0,
                block=engine.default_block("tpu"),  # The accelerator's
                keys_ch=engine.default_keys_ch("tpu"))  # choices.
  static = engine.plan_spec(batch_dev=chunk_dev, **common)
  cont = engine.plan_spec(batch_dev=chunk_dev + cfg.rollout.refill,
                          engine="continuous", slots_dev=chunk_dev * k,
                          refill=cfg.rollout.refill, **common)
  rows = lambda x: jax.ShapeDtypeStruct(
      (x.shape[0] * d,) + x.shape[1:], x.dtype,
      sharding=sharding.batch_sharding(mesh, x.ndim))

  def consts(b):
    return engine.Consts(
        rows(jax.ShapeDtypeStruct((b, p), jnp.int32)),
        rows(jax.ShapeDtypeStruct((b,), jnp.int32)),
        rows(jax.ShapeDtypeStruct((b, 2), jnp.uint32)))

  def state_of(spec, b):
    local = jax.eval_shape(lambda: engine.init_state(mcfg, spec, b))
    return jax.tree.map(rows, local)

  progs = {}
  for name, spec, count in (("prefill_chunk", static, static.first),
                            ("prefill_refill", cont, cont.refill)):
    st = state_of(spec, spec.first + spec.refill)
    progs[name] = engine.insert_program.lower(
        graphdef, params, st, consts(spec.first + spec.refill), spec=spec,
        mesh=mesh, count=count).compile()
  st = state_of(static, static.first)
  windows = (static.cache_len, static.cache_len // 2)
  for w in windows:
    progs[f"decode_step_w{w}"] = engine.step_program.lower(
        graphdef, params, st, spec=static, mesh=mesh, window=w).compile()
  kv = sum(x.size * x.dtype.itemsize for x in (st.k + st.v)) // d
  return ({"kv_cache": int(kv),
           "sampler_params": tree_bytes(state, decode_sh)}, progs,
          {"static": static, "continuous": cont, "windows": windows,
           "devices": d, "chunk_dev": chunk_dev})


def _planned(attention: str) -> str:
  """The attention the planner compiles: the Pallas GPU kernel ("pallas",
  and "auto" on GPU) is a custom call the compiler's cost model cannot see
  into, so it is planned as the window; `continuous_ragged_kernel`
  estimates each row reading its own fill."""
  return "window" if attention in ("pallas", "auto") else attention


def _linear(c1, c2, w1, w2):
  """f(w) = a + b w through two (window, value) points."""
  b = (c1 - c2) / (w1 - w2)
  return lambda w: c1 + b * (np.asarray(w, float) - w1)


def _bucket(need, block, cache_len):
  """The window `attention="window"` reads for a fill of `need` slots."""
  from poly_epo.models.decode_attention import buckets
  sizes = np.asarray(buckets(cache_len, block)) * block
  return sizes[np.searchsorted(sizes, np.maximum(need, 1))]


def _device_schedules(lens_bk, p, specs, step_s, step_b, costs, attention):
  """Seconds, steps and bytes of one device's prompts [b, k] per schedule."""
  static, cont = specs["static"], specs["continuous"]
  c, blk = static.cache_len, static.block
  chunk = specs["chunk_dev"]
  win = (lambda need: _bucket(need, blk, c)) if attention == "window" else (
      lambda need: np.full_like(need, c))
  out = {}
  for name, window in (("static_full", lambda need: np.full_like(need, c)),
                       ("static", win)):
    sec = steps = nbytes = 0.0
    for s in range(0, len(lens_bk), chunk):
      longest = int(lens_bk[s:s + chunk].max())
      w = window(p + np.arange(1, longest))  # Steps after the prefill.
      sec += costs["prefill_chunk"]["estimated_seconds"] + step_s(w).sum()
      nbytes += costs["prefill_chunk"]["bytes_accessed"] + step_b(w).sum()
      steps += longest - 1
    out[name] = (sec, steps, nbytes)
  # Continuous: replay the engine's slots (k * refill free -> refill).
  k, slots, refill = cont.num_samples, cont.slots, cont.refill
  queue = list(range(len(lens_bk)))
  left = np.zeros(slots, int)  # Tokens still to decode per slot (0 free).
  age = np.zeros(slots, int)
  pre = costs["prefill_refill"]
  acc = dict(pre_s=0.0, pre_b=0.0, sec=0.0, nbytes=0.0, own_s=0.0,
             own_b=0.0, steps=0)

  def insert(n_prompts):
    n_prompts = min(n_prompts, len(queue))
    for _ in range(n_prompts):
      b = queue.pop(0)
      free = np.flatnonzero(left == 0)[:k]
      left[free] = lens_bk[b] - 1
      age[free] = 1
    calls = -(-n_prompts // refill)
    acc["pre_s"] += pre["estimated_seconds"] * calls
    acc["pre_b"] += pre["bytes_accessed"] * calls

  insert(slots // k)
  while queue or left.any():
    if queue and (left == 0).sum() >= k * refill:
      insert(refill)
    busy = left > 0
    if not busy.any():
      continue
    w = win(np.array([p + age[busy].max()]))
    # A ragged kernel: each busy row reads its own fill, free slots none.
    own = np.array([(p + age[busy]).sum() / slots])
    acc["sec"] += float(step_s(w)[0])
    acc["nbytes"] += float(step_b(w)[0])
    acc["own_s"] += float(step_s(own)[0])
    acc["own_b"] += float(step_b(own)[0])
    acc["steps"] += 1
    left[busy] -= 1
    age[busy] += 1
  out["continuous"] = (acc["pre_s"] + acc["sec"], acc["steps"],
                       acc["pre_b"] + acc["nbytes"])
  out["continuous_ragged_kernel"] = (acc["pre_s"] + acc["own_s"],
                                     acc["steps"],
                                     acc["pre_b"] + acc["own_b"])
  return out


def estimate(cfg, costs: dict, specs: dict, spread: str,
             prompts: int) -> dict:
  """Per schedule: rollout seconds (the slowest device), decode steps and
  bytes read per generated token, for `prompts` prompts of a step."""
  w1, w2 = specs["windows"]
  pick = lambda key: _linear(costs[f"decode_step_w{w1}"][key],
                             costs[f"decode_step_w{w2}"][key], w1, w2)
  step_s, step_b = pick("estimated_seconds"), pick("bytes_accessed")
  k = cfg.num_samples
  d = specs["devices"]
  lens = lengths(spread, prompts * k, cfg.max_new_tokens).reshape(prompts, k)
  per_dev = -(-prompts // d)
  results = {}
  for dev in range(d):
    block = lens[dev * per_dev:(dev + 1) * per_dev]
    if not len(block):
      continue
    for name, (sec, steps, nbytes) in _device_schedules(
        block, cfg.max_prompt_tokens, specs, step_s, step_b, costs,
        _planned(cfg.rollout.attention)).items():
      r = results.setdefault(name, {"seconds": 0.0, "decode_steps": 0,
                                    "bytes": 0.0})
      r["seconds"] = max(r["seconds"], sec)
      r["decode_steps"] = max(r["decode_steps"], int(steps))
      r["bytes"] += nbytes
  tokens = int(lens.sum())
  for r in results.values():
    r["bytes_per_token"] = r.pop("bytes") / tokens
  results["lengths"] = spread
  results["generated_tokens"] = tokens
  return results
