"""poly_epo.engine.loop: the continuous schedule returns exactly the static
schedule's tokens (any slot count, refill size, chunking, mesh, over a
paged cache of any page size or pool, with a narrowing tail); finished
prompts are reported once, while others decode; counters add up; no
collective over the batch axes runs inside the decode loop of a pod."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from engine_helpers import run_rollout
from poly_epo import sharding
from poly_epo.engine import loop, settings
from poly_epo.engine.spec import plan_spec
from poly_epo.models import init_model, preset

EOS = 2
K = 3
L = 24


@pytest.fixture(scope="module")
def policy():
  """A random 8-token policy: EOS has probability ~1/8 at every step, so
  response lengths spread from 1 to L."""
  model = init_model(preset("tiny", vocab_size=8), seed=1)
  return nnx.split(model, nnx.Param, ...)


def _prompts(b=10, p=6, seed=0):
  rs = np.random.RandomState(seed)
  tokens = rs.randint(3, 8, (b, p)).astype(np.int32)
  mask = np.ones((b, p), bool)
  for i in range(b):
    mask[i, :rs.randint(0, p)] = False  # Prompts of 1..p tokens.
  tokens[~mask] = 0
  return tokens, mask


def _run(policy, mesh=None, **kw):
  graphdef, params, rest = policy
  tokens, mask = _prompts()
  if mesh is not None:
    params = jax.device_put(params, sharding.tree_shardings(params, mesh))
  return run_rollout((graphdef, params, rest), tokens, mask, mesh=mesh,
                     num_samples=K, max_new_tokens=L, eos_id=EOS, pad_id=0,
                     **kw)


@pytest.fixture(scope="module")
def static(policy):
  out = _run(policy)
  lengths = out.lengths.ravel()
  assert lengths.min() <= 3 and lengths.max() == L  # Ragged indeed.
  return out


def _same(got, want):
  np.testing.assert_array_equal(got.tokens, want.tokens)
  np.testing.assert_array_equal(got.mask, want.mask)
  np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)


@pytest.mark.parametrize("slots,refill,chunk", [
    (3, 1, 0), (7, 2, 4), (30, 3, 0)])
def test_continuous_equals_static_on_one_device(policy, static, slots,
                                                refill, chunk):
  stats = {}
  got = _run(policy, engine="continuous", slots=slots, refill=refill,
             chunk_prompts=chunk, stats=stats)
  _same(got, static)
  # Every busy row-step made one token (the first comes from the prefill).
  assert stats["busy_steps"] == int(static.lengths.sum()) - 10 * K
  assert stats["slot_steps"] >= stats["busy_steps"]


@pytest.mark.parametrize("chunk", [3, 4])
def test_static_chunks_change_no_token(policy, static, chunk):
  _same(_run(policy, chunk_prompts=chunk), static)


@pytest.mark.parametrize("shape", [(2, 2, 2), (1, 8, 1)])
def test_continuous_on_a_mesh_equals_one_device(policy, static, shape):
  mesh = sharding.make_mesh(*shape)
  got = _run(policy, mesh=mesh, engine="continuous",
             slots=K * sharding.batch_shards(mesh))
  _same(got, static)


def test_keys_stored_like_values_decode_the_same(policy, static):
  """The accelerators' key layout ([S, K, C, H]) on CPU: static and
  continuous agree exactly, and with the CPU layout's tokens."""
  a = _run(policy, keys_ch=True)
  b = _run(policy, engine="continuous", slots=6, keys_ch=True)
  _same(b, a)
  np.testing.assert_array_equal(a.tokens, static.tokens)


def test_attention_variants_give_the_same_tokens(policy, static):
  """The Pallas GPU kernel (interpret mode here) sums in another order, so
  its log-probs agree to rounding; tokens could differ only at a tie."""
  for impl, schedule in (("ragged", "static"), ("full", "static"),
                       ("pallas", "continuous")):
    got = _run(policy, attention=impl, engine=schedule, slots=6)
    np.testing.assert_array_equal(got.tokens, static.tokens, err_msg=impl)
    np.testing.assert_allclose(got.logprobs, static.logprobs, atol=1e-5)


def test_prefix_cache_decodes_the_same_tokens(policy, static):
  """The prefix cache (each prompt's keys and values once, CPU's static
  default) sums prompt and response apart: log-probs agree to rounding,
  tokens could differ only at a tie; in chunks and on a mesh as well. (On
  CPU `static` is itself the prefix cache: the reference here is the
  contiguous cache, named.)"""
  want = _run(policy, cache="contiguous", attention="window")
  for kw in (dict(), dict(chunk_prompts=4),
             dict(mesh=sharding.make_mesh(2, 2, 2))):
    got = _run(policy, cache="prefix", attention="auto", **kw)
    np.testing.assert_array_equal(got.tokens, want.tokens, err_msg=kw)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.logprobs, want.logprobs, atol=1e-5)
  np.testing.assert_array_equal(static.tokens, want.tokens)


@pytest.mark.parametrize("engine_name,slots,refill,page,pages", [
    ("static", 0, 1, 0, 0),  # The whole batch, pool as big as contiguous.
    ("continuous", 6, 1, 4, 40),  # Prompts of 4+ tokens share a page.
    ("continuous", 30, 2, 8, 12),  # One prompt's pages: refills wait.
    ("continuous", 9, 3, 2, 0)])
def test_paged_cache_decodes_the_same_tokens(policy, static, engine_name,
                                             slots, refill, page, pages):
  stats = {}
  got = _run(policy, engine=engine_name, slots=slots, refill=refill,
             cache="paged", page_size=page, pages=pages, stats=stats)
  _same(got, static)
  assert stats["pages_leaked"] == 0  # Every page back in the pool.
  assert 0 < stats["pages_peak"] <= stats["pages"]
  if pages:
    assert stats["pages"] == pages
    assert stats["pages_peak"] > pages // 2  # The pool was what limited.
  if pages == 12:  # Rows waited for pages, and still every token is right.
    assert stats["page_waits"] > 0


def test_paged_default_is_a_slot_per_row_in_the_chunks_memory(policy,
                                                              static):
  stats = {}
  got = _run(policy, engine="continuous", chunk_prompts=2, cache="paged",
             page_size=8, stats=stats)
  _same(got, static)
  # 10 prompts x 3 samples, each in its own slot; the pool holds what 2
  # prompts' rows of 32 slots (4 pages of 8) would in the contiguous cache.
  assert stats["slots"] == 30 and stats["pages"] == 2 * K * 4
  assert stats["page_waits"] > 0 and stats["pages_leaked"] == 0


def test_paged_cache_on_a_mesh_equals_one_device(policy, static):
  mesh = sharding.make_mesh(2, 2, 2)
  stats = {}
  got = _run(policy, mesh=mesh, engine="continuous", slots=12, cache="paged",
             page_size=4, pages=8 * 14, stats=stats)
  _same(got, static)
  assert stats["pages_leaked"] == 0


def test_finished_prompts_are_reported_once_while_others_decode(policy,
                                                                static):
  calls = []
  got = _run(policy, engine="continuous", slots=6,
             on_done=lambda i, t, m: calls.append((i, t, m)))
  _same(got, static)
  seen = np.concatenate([i for i, _, _ in calls])
  assert sorted(seen.tolist()) == list(range(10))
  assert len(calls) > 1  # Reported in several groups, not once at the end.
  for idx, tok, msk in calls:
    np.testing.assert_array_equal(tok, static.tokens[idx])
    np.testing.assert_array_equal(msk, static.mask[idx])


@pytest.mark.parametrize("cache,report", [
    ("contiguous", False), ("contiguous", True), ("paged", True)])
def test_narrowing_tail_decodes_the_same_tokens(policy, static, cache,
                                                report):
  """Once the queue is empty the busy rows move to the first slots and
  only those decode: fewer row-steps, the same tokens, also when segments
  (on_done) end mid-stage and with rows waiting for pages."""
  calls, runs = [], {}
  for narrow in ("on",) if report else ("off", "on"):
    runs[narrow] = {}
    got = _run(policy, engine="continuous", slots=16, narrow=narrow,
               cache=cache, page_size=4, pages=60 if cache == "paged" else 0,
               stats=runs[narrow], segment_steps=3 if report else 0,
               on_done=(lambda i, t, m: calls.append(i)) if report else None)
    _same(got, static)
  on = runs["on"]
  assert on["busy_steps"] == int(static.lengths.sum()) - 10 * K
  # The tail's steps are narrower than the 16 slots...
  assert on["busy_steps"] <= on["slot_steps"] < on["steps"] * 16
  if "off" in runs:  # ...and narrowing skips no step.
    assert on["steps"] == runs["off"]["steps"]
    assert runs["off"]["slot_steps"] == on["steps"] * 16
  if report:  # Segments of 3 steps: stages resumed mid-way.
    assert on["segments"] > 5 and len(calls) > 2
  if cache == "paged":
    assert on["pages_leaked"] == 0 and on["page_waits"] > 0


def test_narrowing_on_a_mesh_equals_one_device(policy, static):
  mesh = sharding.make_mesh(1, 8, 1)
  stats = {}
  got = _run(policy, mesh=mesh, engine="continuous", slots=8 * 8,
             narrow="on", stats=stats)
  _same(got, static)
  assert stats["slot_steps"] < stats["steps"] * 8 * 8


def test_bad_settings_name_the_field(policy):
  with pytest.raises(ValueError, match="rollout.slots"):
    _run(policy, engine="continuous", slots=4, refill=2)
  with pytest.raises(ValueError, match="rollout.engine"):
    _run(policy, engine="paged")
  with pytest.raises(ValueError, match="rollout.attention"):
    _run(policy, attention="flash")
  with pytest.raises(ValueError, match="rollout.cache"):
    _run(policy, cache="virtual")
  with pytest.raises(ValueError, match="rollout.narrow"):
    _run(policy, engine="continuous", slots=8, narrow="yes")
  with pytest.raises(ValueError, match="rollout.attention='tpu_paged'"):
    _run(policy, attention="tpu_paged")
  # A prompt of 5 tokens and its 3 samples of 24: one shared page of 4
  # slots, then 7 pages each (slots 4..28): 22 pages.
  with pytest.raises(ValueError, match="rollout.pages.*22 pages of 4"):
    _run(policy, engine="continuous", slots=6, cache="paged", page_size=4,
         pages=21)
  with pytest.raises(ValueError, match="static engine"):
    _run(policy, cache="paged", page_size=4, pages=100)


def test_pack_prompts_keeps_order_and_lengths():
  tokens = np.array([[0, 0, 5, 6], [7, 8, 9, 1], [0, 0, 0, 0]])
  mask = tokens > 0
  packed, plen = loop.pack_prompts(tokens, mask)
  np.testing.assert_array_equal(plen, [2, 4, 0])
  np.testing.assert_array_equal(packed, [[5, 6, 0, 0], [7, 8, 9, 1],
                                         [0, 0, 0, 0]])


# --- The compiled decode loop of a pod (abstract TPU devices) ------------

_COLLECTIVE = re.compile(
    r"\b(all-reduce|all-gather|reduce-scatter|all-to-all|collective-permute)"
    r"(-start)?\(")


def _computations(hlo: str) -> dict:
  comps, name = {}, None
  for line in hlo.splitlines():
    m = re.match(r"^(?:ENTRY )?%?([\w.\-]+) ", line)
    if m and line.rstrip().endswith("{"):
      name = m.group(1)
      comps[name] = []
    elif name is not None:
      comps[name].append(line)
  return {k: "\n".join(v) for k, v in comps.items()}


def _loop_collectives(hlo: str) -> list:
  """Collective instructions inside while loops (bodies and everything they
  call), with their replica groups."""
  comps = _computations(hlo)
  roots = set()
  for text in comps.values():
    roots |= set(re.findall(r"body=%?([\w.\-]+)", text))
    roots |= set(re.findall(r"condition=%?([\w.\-]+)", text))
  seen, todo = set(), list(roots)
  while todo:
    name = todo.pop()
    if name in seen or name not in comps:
      continue
    seen.add(name)
    todo += [c for c in re.findall(r"%([\w.\-]+)", comps[name]) if c in comps]
  return [line.strip() for name in seen for line in comps[name].splitlines()
          if _COLLECTIVE.search(line)]


def _compile_segment(mesh, cfg, **spec_args):
  model = init_model(cfg, seed=0)
  graphdef, state = nnx.split(model)
  state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype),
                       state)
  shard = sharding.decode_shardings(state, mesh)
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=s), state, shard)
  d = sharding.batch_shards(mesh)
  b, p = 2 * d, 8
  row = lambda shape, dt: jax.ShapeDtypeStruct(
      shape, dt, sharding=sharding.batch_sharding(mesh, len(shape)))
  c = loop.Consts(row((b, p), np.int32), row((b,), np.int32),
                  row((b, 2), np.uint32))
  s = settings.make(**{"num_samples": 2, "max_new_tokens": 16,
                       "engine": "continuous", "refill": 1, "block": 16,
                       "platform": "tpu", **spec_args})
  spec = plan_spec(s, batch_dev=2, prompt_width=p, slots_dev=2)
  return loop.begin.lower(graphdef, params, c, spec=spec,
                          mesh=mesh).compile().as_text()


def test_no_batch_axis_collective_inside_the_decode_loop_of_a_pod():
  """v5p-16 (8 chips, 2 hosts), fsdp over all 8: the FSDP weights are laid
  out for decoding, so the loop (prefill refills included) talks to no
  other chip; with tensor=2 only within a tensor pair."""
  from tpu_topologies import tpu_devices
  devices = tpu_devices("v5p-16")
  cfg = preset("tiny", vocab_size=64, num_kv_heads=2, num_heads=4)
  mesh = sharding.make_mesh(1, 8, 1, devices=devices)
  assert _loop_collectives(_compile_segment(mesh, cfg)) == []
  mesh = sharding.make_mesh(1, 4, 2, devices=devices)
  lines = _loop_collectives(_compile_segment(mesh, cfg))
  assert lines  # The tensor pair does talk (its MLP halves) ...
  _assert_within_tensor_pairs(lines)  # ... but only within the pair.


def _assert_within_tensor_pairs(lines):
  """Every collective's groups are tensor pairs: logical ids 2i, 2i+1."""
  for line in lines:
    groups = re.search(r"(?:replica_groups|source_target_pairs)="
                       r"(\{\{[\d,{}]+\}\}|\[\d+,\d+\]<=\[\d+\])", line)
    assert groups, line
    text = groups.group(1)
    if text.startswith("["):  # Iota form [n, 2] <= [8]: consecutive pairs.
      assert re.match(r"\[\d+,2\]<=\[8\]", text), line
      continue
    for g in re.findall(r"\{([\d,]+)\}", text):
      assert len({int(i) // 2 for i in g.split(",")}) == 1, line


def test_the_paged_kernel_compiles_for_a_pod_without_batch_collectives():
  """The paged cache with the Pallas TPU kernel (both "auto" on TPU),
  compiled by the TPU compiler for v5p-16: the Mosaic kernel is in the loop, and no
  collective over the batch axes; with tensor=2 each chip runs the kernel
  on its own kv head."""
  from tpu_topologies import tpu_devices
  devices = tpu_devices("v5p-16")
  cfg = preset("tiny", vocab_size=256, num_kv_heads=2, num_heads=4,
               head_dim=128)
  for shape in ((1, 8, 1), (1, 4, 2)):
    mesh = sharding.make_mesh(*shape, devices=devices)
    text = _compile_segment(mesh, cfg, cache="auto", page_size=16,
                            max_new_tokens=120, attention="auto")
    assert "tpu_custom_call" in text
    lines = _loop_collectives(text)
    if shape[2] == 1:
      assert lines == []
    else:
      _assert_within_tensor_pairs(lines)


def test_a_cpu_mesh_loop_talks_only_within_tensor_pairs():
  """Data x fsdp x tensor = 2 x 2 x 2 on CPU: the draw takes whole logits
  (gathered within the pair), so no collective spans the batch shards,
  whose loops run different numbers of steps (a collective-permute of the
  vocabulary-sharded draw over all 8 devices used to deadlock XLA:CPU)."""
  cfg = preset("tiny", vocab_size=64, num_kv_heads=2, num_heads=4)
  lines = _loop_collectives(_compile_segment(
      sharding.make_mesh(2, 2, 2), cfg, platform="cpu"))
  assert not any("collective-permute" in line for line in lines)
  _assert_within_tensor_pairs(lines)
