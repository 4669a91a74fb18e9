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
  its own fill (what a ragged / paged decode kernel does): the step cost at
  the busy rows' mean fill;
- `continuous_paged`: `rollout.cache="paged"` with the Pallas TPU kernel
  (`rollout.attention="auto"` on TPU): a slot for every row of the
  device, a pool of pages as large as the contiguous cache's memory,
  prompts admitted and pages granted as the engine does (the banker's
  test, `models/paged.py`), each step's KV read at the busy rows' own
  fill. Prompts at full width here, so no sharing is counted beyond their
  full pages.

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


def configured(cfg, platform: str) -> str:
  """The schedule a config runs on `platform`: its engine, or
  `continuous_paged` (the paged cache; its kernel reads each row's own
  fill)."""
  from poly_epo import engine
  r = cfg.rollout
  cache = engine.resolve_cache(r.get("cache", "contiguous"), r.attention,
                               platform)
  return "continuous_paged" if cache == "paged" and \
      r.engine == "continuous" else r.engine


def _planned(attention: str) -> str:
  """The attention the planner compiles: the Pallas kernels ("pallas",
  "tpu_paged", "auto") are custom calls the compiler's cost model cannot
  see into, so they are planned as the window; `continuous_ragged_kernel`
  and `continuous_paged` estimate each row reading its own fill."""
  return "window" if attention in ("pallas", "auto", "tpu_paged") \
      else attention


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
  pre = costs["prefill_refill"]

  def replay(slots, pool):
    """(prefill s, prefill bytes, step s, step bytes, own-fill s, own-fill
    bytes, steps) of the continuous engine's slots (and page pool)."""
    acc = np.zeros(7)
    for fills, calls in _replay(lens_bk, p, cont.num_samples, slots,
                                cont.refill, pool, cont.max_new_tokens):
      acc[0] += pre["estimated_seconds"] * calls
      acc[1] += pre["bytes_accessed"] * calls
      if not len(fills):
        continue
      w = win(np.array([fills.max()]))
      # Each busy row reading its own fill (a ragged / paged kernel), the
      # step's cost model being for `cont.slots` rows at a window.
      own = np.array([fills.sum() / cont.slots])
      acc[2:] += (float(step_s(w)[0]), float(step_b(w)[0]),
                  float(step_s(own)[0]), float(step_b(own)[0]), 1)
    return acc

  acc = replay(cont.slots, None)
  out["continuous"] = (acc[0] + acc[2], acc[6], acc[1] + acc[3])
  out["continuous_ragged_kernel"] = (acc[0] + acc[4], acc[6], acc[1] + acc[5])
  # The paged cache with the TPU kernel: a slot per row, as many pages as
  # the contiguous cache's memory, prompts admitted as pages free up.
  page = cont.block
  pool = cont.slots * (cont.cache_len // page)
  acc = replay(len(lens_bk) * cont.num_samples, (pool, page))
  out["continuous_paged"] = (acc[0] + acc[4], acc[6], acc[1] + acc[5])
  return out


def _safe(claim, held, free) -> bool:
  """The banker's test of `paged.safe`, for the live rows given."""
  order = np.argsort(claim, kind="stable")
  c, h = claim[order], held[order]
  return bool(np.all(c <= free + np.cumsum(h) - h))


def _reserved(claim, live, row_id, free, most):
  """`paged.reserved`: (claims' sum, mask) of the oldest live rows (at most
  `most`) whose claims the free pages cover together."""
  idx = sorted(np.flatnonzero(live), key=lambda s: row_id[s])
  total, kept = 0, np.zeros(len(claim), bool)
  for s in idx[:most]:
    if total + claim[s] > free:
      break
    total += claim[s]
    kept[s] = True
  return total, kept


def _replay(lens_bk, p, k, slots, refill, pool, max_new_tokens):
  """The continuous engine's schedule, decided as the engine decides: yields
  per decode step (fills of the rows that decoded [n], prefill calls made
  before it). `pool`: (pages, page) of a paged cache (admission and page
  grants by the banker's test, as `models/paged.py`), prompts of `p`
  tokens; None: contiguous."""
  from poly_epo.models import paged
  queue = list(range(len(lens_bk)))
  left = np.zeros(slots, int)  # Tokens still to decode per slot (0 free).
  age = np.zeros(slots, int)
  owner = np.full(slots, -1)
  row_id = np.zeros(slots, int)  # The engine's row: b * k + j (its age).
  claim = np.zeros(slots, int)  # Own pages a row may still need ...
  held = np.zeros(slots, int)  # ... and holds.
  live_rows = {}  # Prompt -> its rows not ended (paged: shared pages).
  if pool is not None:
    pages, page = pool
    shared, own = paged.row_pages(p, max_new_tokens, page)
    first_own = int(p % page > 0)
    most = paged.reserve_rows(pages, -(-(p + max_new_tokens) // page))
  state = {"free": pages if pool is not None else 0}

  def release(slot_ids):
    for s in slot_ids:
      b = owner[s]
      owner[s] = -1
      if pool is None:
        continue
      state["free"] += held[s]
      claim[s] = held[s] = 0
      live_rows[b] -= 1
      if live_rows[b] == 0:
        state["free"] += shared
        del live_rows[b]

  def admissible(free_slots):
    if pool is None:
      return True
    keep, _ = _reserved(claim, owner >= 0, row_id, state["free"], most)
    c, h = claim.copy(), held.copy()
    c[free_slots], h[free_slots] = own - first_own, first_own
    live = (owner >= 0)
    live[free_slots] = True
    rest = state["free"] - shared - k * first_own
    return rest >= keep and _safe(c[live], h[live], rest)

  def insert(n_prompts):
    """Admit up to n prompts (a prefix, while safe): prefill calls."""
    n_prompts = min(n_prompts, len(queue))
    for _ in range(n_prompts):
      free = np.flatnonzero(owner < 0)[:k]
      if not admissible(free):
        break
      b = queue.pop(0)
      left[free] = lens_bk[b] - 1
      age[free] = 1
      owner[free] = b
      row_id[free] = b * k + np.arange(k)
      if pool is not None:
        claim[free], held[free] = own - first_own, first_own
        state["free"] -= shared + k * first_own
        live_rows[b] = k
      release(free[left[free] == 0])  # Ended with their first token.
    return -(-n_prompts // refill)

  def room():
    free = np.flatnonzero(owner < 0)
    return bool(queue) and len(free) >= k * refill and admissible(free[:k])

  def grants(busy):
    """Rows that may decode this step (paged: those holding the page they
    write into, or granted one now, oldest row first, while safe)."""
    if pool is None:
      return busy
    run = busy.copy()
    live = owner >= 0
    keep, kept = _reserved(claim, live, row_id, state["free"], most)
    spare = state["free"] - keep
    for s in sorted(np.flatnonzero(busy), key=lambda s: row_id[s]):
      if (p + age[s] - 1) // page < shared + held[s]:
        continue  # Writes into a page it holds.
      c, h = claim.copy(), held.copy()
      c[s] -= 1
      h[s] += 1
      if state["free"] >= 1 and (kept[s] or spare >= 1) and _safe(
          c[live], h[live], state["free"] - 1):
        claim[s], held[s] = c[s], h[s]
        state["free"] -= 1
        spare -= not kept[s]
      else:
        run[s] = False
    return run

  first = slots // k if pool is None else min(
      slots // k, pages // paged.worst_prompt_pages(p, k, max_new_tokens,
                                                    page))
  calls = insert(first)
  while queue or left.any():
    if room():
      calls += insert(refill)
    busy = left > 0
    if not busy.any():
      yield np.zeros(0), calls
      calls = 0
      continue
    run = grants(busy)
    left[run] -= 1
    age[run] += 1
    yield p + age[run] - 1, calls
    calls = 0
    release(np.flatnonzero(run & (left == 0)))


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
