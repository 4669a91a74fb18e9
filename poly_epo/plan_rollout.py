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
  test, `engine/allocator_host.py`), each step's KV read at the busy rows' own
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


def compile_programs(mcfg, mesh, cfg, chunk: int, abstract, tree_bytes,
                     platform: str):
  """(memory per device, compiled programs, specs) for the run's rollout
  settings on the target `platform` (the planned chip's, whatever the
  compiling devices). `abstract(tree, sh)` attaches shardings to
  ShapeDtypeStructs; `tree_bytes(tree, sh)` counts one device's bytes of
  them (poly_epo/plan.py's)."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from poly_epo import sharding
  from poly_epo.engine import loop
  from poly_epo.engine.spec import plan_spec
  from poly_epo.models.transformer import Transformer
  k, p = cfg.num_samples, cfg.max_prompt_tokens
  d = sharding.batch_shards(mesh)
  chunk_dev = max(chunk // d, 1)
  model = nnx.eval_shape(lambda: Transformer(mcfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, jnp.dtype(mcfg.dtype) if jnp.issubdtype(x.dtype, jnp.floating)
      else x.dtype), state)
  decode_sh = sharding.decode_shardings(state, mesh)
  params = abstract(state, decode_sh)
  run = run_settings(cfg, platform)
  attention = planned(run)
  # The contiguous programs with the planned kernel, at the target
  # platform's block and key layout.
  common = run.replace(cache="contiguous", attention=attention, eos_id=0)
  static = plan_spec(common.replace(engine="static"), batch_dev=chunk_dev,
                     prompt_width=p)
  cont = plan_spec(common.replace(engine="continuous"),
                   batch_dev=chunk_dev + run.refill, prompt_width=p,
                   slots_dev=chunk_dev * k)
  rows = lambda x: jax.ShapeDtypeStruct(
      (x.shape[0] * d,) + x.shape[1:], x.dtype,
      sharding=sharding.batch_sharding(mesh, x.ndim))

  def consts(b):
    return loop.Consts(
        rows(jax.ShapeDtypeStruct((b, p), jnp.int32)),
        rows(jax.ShapeDtypeStruct((b,), jnp.int32)),
        rows(jax.ShapeDtypeStruct((b, 2), jnp.uint32)))

  def state_of(spec, b):
    local = jax.eval_shape(lambda: loop.init_state(mcfg, spec, b))
    return jax.tree.map(rows, local)

  progs = {}
  for name, spec, count in (("prefill_chunk", static, static.first),
                            ("prefill_refill", cont, cont.refill)):
    st = state_of(spec, spec.first + spec.refill)
    progs[name] = loop.insert_program.lower(
        graphdef, params, st, consts(spec.first + spec.refill), spec=spec,
        mesh=mesh, count=count).compile()
  st = state_of(static, static.first)
  windows = (static.cache_len, static.cache_len // 2)
  for w in windows:
    progs[f"decode_step_w{w}"] = loop.step_program.lower(
        graphdef, params, st, spec=static, mesh=mesh, window=w).compile()
  kv = sum(x.size * x.dtype.itemsize for x in (st.k + st.v)) // d
  return ({"kv_cache": int(kv),
           "sampler_params": tree_bytes(state, decode_sh)}, progs,
          {"static": static, "continuous": cont, "windows": windows,
           "devices": d, "chunk_dev": chunk_dev, "attention": attention})


def run_settings(cfg, platform: str):
  """The run's rollout settings on `platform` (as the trainer resolves
  them)."""
  from poly_epo.engine import settings
  return settings.from_config(cfg, platform)


def configured(cfg, platform: str) -> str:
  """The schedule a config runs on `platform`: its engine, or
  `continuous_paged` (the paged cache; its kernel reads each row's own
  fill)."""
  run = run_settings(cfg, platform)
  return "continuous_paged" if run.cache == "paged" and \
      run.engine == "continuous" else run.engine


def planned(run) -> str:
  """The kernel the planner compiles for the run's: the Pallas kernels are
  custom calls the compiler's cost model cannot see into, so they are
  planned as the kernel they name (`Kernel.planned_as`: the window);
  `continuous_ragged_kernel` and `continuous_paged` estimate each row
  reading its own fill."""
  from poly_epo.engine import kernels
  return kernels.get(run.attention).planned_as or run.attention


def _linear(c1, c2, w1, w2):
  """f(w) = a + b w through two (window, value) points."""
  b = (c1 - c2) / (w1 - w2)
  return lambda w: c1 + b * (np.asarray(w, float) - w1)


def _bucket(need, block, cache_len):
  """The window `attention="window"` reads for a fill of `need` slots."""
  from poly_epo.engine.kernels.dense import buckets
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


def _replay(lens_bk, p, k, slots, refill, pool, max_new_tokens):
  """The continuous engine's schedule, decided as the engine decides: yields
  per decode step (fills of the rows that decoded [n], prefill calls made
  before it). `pool`: (pages, page) of a paged cache (admissions and page
  grants by the engine's policy, `engine/allocator_host.py`), prompts of
  `p` tokens; None: contiguous."""
  from poly_epo.engine import allocator, allocator_host
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
    shared, _ = allocator.row_pages(p, max_new_tokens, page)
    most = allocator.reserve_rows(pages, -(-(p + max_new_tokens) // page))
    policy = dict(max_new_tokens=max_new_tokens, page=page, reserve=most)
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

  def admit(free_slots, commit):
    """Whether the queue's next prompt is admitted into `free_slots`
    (paged: the engine's admission test; `commit` takes its pages)."""
    if pool is None:
      return True
    taken, c, h, f = allocator_host.admission(
        state["free"], claim, held, owner >= 0, [p], [True],
        free_slots[None], order_S=row_id, **policy)
    if taken[0] and commit:
      claim[:], held[:], state["free"] = c, h, f
    return bool(taken[0])

  def insert(n_prompts):
    """Admit up to n prompts (a prefix, while safe): prefill calls."""
    n_prompts = min(n_prompts, len(queue))
    for _ in range(n_prompts):
      free = np.flatnonzero(owner < 0)[:k]
      if not admit(free, commit=True):
        break
      b = queue.pop(0)
      left[free] = lens_bk[b] - 1
      age[free] = 1
      owner[free] = b
      row_id[free] = b * k + np.arange(k)
      live_rows[b] = k
      release(free[left[free] == 0])  # Ended with their first token.
    return -(-n_prompts // refill)

  def room():
    free = np.flatnonzero(owner < 0)
    return bool(queue) and len(free) >= k * refill and admit(
        free[:k], commit=False)

  def grants(busy):
    """Rows that may decode this step (paged: those holding the page they
    write into, or granted one now by the engine's policy)."""
    if pool is None:
      return busy
    need = busy & ((p + age - 1) // page >= shared + held)
    c, h, waiting, f = allocator_host.grant(
        state["free"], need, claim, held, owner >= 0, row_id, most)
    claim[:], held[:], state["free"] = c, h, f
    return busy & ~waiting

  first = slots // k if pool is None else min(
      slots // k, pages // allocator.worst_prompt_pages(
          p, k, max_new_tokens, page))
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
        specs["attention"]).items():
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
