"""poly_epo.plan_rollout: the planner's replay of each schedule takes as many
decode steps as the engine really runs for the same response lengths; the
length spreads are what they say."""

import numpy as np
import pytest
from flax import nnx

from engine_helpers import run_rollout
from poly_epo import plan_rollout
from poly_epo.engine import settings
from poly_epo.engine.spec import plan_spec
from poly_epo.models import init_model, preset


@pytest.mark.parametrize("engine_name,slots,refill", [
    ("static", 0, 1), ("continuous", 6, 1), ("continuous", 9, 2)])
def test_replay_takes_the_engines_decode_steps(engine_name, slots, refill):
  model = init_model(preset("tiny", vocab_size=8), seed=1)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  b, k, p, length, chunk = 8, 3, 5, 20, 4
  tokens = np.random.RandomState(0).randint(3, 8, (b, p))
  stats = {}
  out = run_rollout((graphdef, params, rest), tokens, np.ones((b, p), bool),
                    seed=3, num_samples=k, max_new_tokens=length, eos_id=2,
                    pad_id=0, chunk_prompts=chunk, engine=engine_name,
                    slots=slots, refill=refill, stats=stats)
  common = settings.make(num_samples=k, max_new_tokens=length, eos_id=2,
                         refill=refill)
  specs = {"static": plan_spec(common, batch_dev=chunk, prompt_width=p),
           "continuous": plan_spec(
               common.replace(engine="continuous"), batch_dev=b,
               prompt_width=p, slots_dev=slots or chunk * k),
           "chunk_dev": chunk}
  one = {"estimated_seconds": 1.0, "bytes_accessed": 1.0}
  got = plan_rollout._device_schedules(
      out.lengths, p, specs, lambda w: np.ones(np.shape(w)),
      lambda w: np.ones(np.shape(w)), {"prefill_chunk": one,
                                       "prefill_refill": one}, "window")
  name = "static" if engine_name == "static" else "continuous"
  assert got[name][1] == stats["steps"]


@pytest.mark.parametrize("slots,pages,page", [(24, 30, 4), (9, 40, 8)])
def test_paged_replay_takes_the_engines_decode_steps(slots, pages, page):
  """Refills that wait for pages as well as slots: the replay (the
  planner's `continuous_paged`) decides as the engine does."""
  model = init_model(preset("tiny", vocab_size=8), seed=1)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  b, k, p, length = 8, 3, 5, 20
  tokens = np.random.RandomState(0).randint(3, 8, (b, p))
  stats = {}
  out = run_rollout((graphdef, params, rest), tokens, np.ones((b, p), bool),
                    seed=3, num_samples=k, max_new_tokens=length, eos_id=2,
                    pad_id=0, engine="continuous", slots=slots, cache="paged",
                    pages=pages, page_size=page, stats=stats)
  assert stats["pages_peak"] > pages - 2 * k * (-(-(p + length) // page))
  steps = sum(len(fills) > 0 for fills, _ in plan_rollout._replay(
      out.lengths, p, k, slots, 1, (pages, page), length))
  assert steps == stats["steps"]


def test_length_spreads():
  cap = 400
  assert (plan_rollout.lengths("max", 50, cap) == cap).all()
  u = plan_rollout.lengths("uniform", 20000, cap)
  assert u.min() >= cap // 20 and u.max() <= cap
  assert abs(u.mean() - (cap // 20 + cap) / 2) < 3
  c = plan_rollout.lengths("capped", 20000, cap)
  assert abs((c == cap).mean() - 0.3) < 0.02
  with pytest.raises(ValueError, match="--lengths"):
    plan_rollout.lengths("long", 5, cap)
