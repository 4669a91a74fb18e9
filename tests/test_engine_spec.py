"""poly_epo.engine_spec: what each platform resolves "auto" to, the slot
and page arithmetic of `plan_spec` (checked by hand-counted pages), the
narrowing tail's widths, and errors that name the config field."""

import pytest

from poly_epo import engine_spec
from poly_epo.models import paged


@pytest.mark.parametrize("platform,attention,want", [
    ("tpu", "auto", "paged"), ("tpu", "tpu_paged", "paged"),
    ("tpu", "window", "contiguous"), ("gpu", "auto", "contiguous"),
    ("cpu", "auto", "contiguous")])
def test_auto_cache_is_paged_only_where_its_kernel_runs(platform, attention,
                                                         want):
  assert engine_spec.resolve_cache("auto", attention, platform) == want
  assert engine_spec.resolve_cache("paged", attention, platform) == "paged"


def _spec(**kw):
  args = dict(batch_dev=4, prompt_width=10, num_samples=2,
              max_new_tokens=20, platform="cpu")
  return engine_spec.plan_spec(**{**args, **kw})


def test_paged_arithmetic():
  s = _spec(engine="continuous", cache="paged", page_size=4, pages_dev=40)
  # 10 + 20 slots -> 32 (multiples of the page), 8 pages per row; a slot
  # per row (8) since the pool, not slots, limits; the first insert takes
  # the prompts that fit at the widest: a 10-token prompt holds 2 shared
  # pages + 2 x 6 own (slots 8..30) = 14, and 40 // 14 = 2.
  assert (s.page, s.cache_len, s.pages, s.slots) == (4, 32, 40, 8)
  assert paged.worst_prompt_pages(10, 2, 20, 4) == 14
  assert s.first == 2 and s.refill == 1
  assert s.attention == "window"  # "window" stays on CPU.
  # Without a pool size: the contiguous memory of the slots.
  s = _spec(engine="continuous", cache="paged", page_size=4, slots_dev=4)
  assert s.pages == 4 * 8 and s.slots == 4
  s = _spec(engine="continuous", cache="paged", page_size=4,
            pool_rows_dev=3)
  assert s.pages == 3 * 8 and s.slots == 8
  # The TPU kernel, interpreted off TPU; the window refused on TPU.
  assert _spec(cache="paged", attention="tpu_paged").attention == \
      "tpu_paged_interpret"
  assert _spec(cache="auto", attention="auto",
               platform="tpu").attention == "tpu_paged"


def test_errors_name_the_field():
  with pytest.raises(ValueError, match="rollout.pages.*14 pages of 4"):
    _spec(engine="continuous", cache="paged", page_size=4, pages_dev=13)
  with pytest.raises(ValueError, match="static engine"):
    _spec(cache="paged", page_size=4, pages_dev=20)
  with pytest.raises(ValueError, match="rollout.cache"):
    _spec(cache="virtual")
  with pytest.raises(ValueError, match="rollout.attention='window'.*TPU"):
    _spec(cache="paged", attention="window", platform="tpu")
  with pytest.raises(ValueError, match="set rollout.cache='paged'"):
    _spec(attention="tpu_paged")
  with pytest.raises(ValueError, match="rollout.slots"):
    _spec(engine="continuous", slots_dev=1)


def test_narrowing_widths():
  # Halves (rounded up) down to MIN_WIDTH rows; CPU only under "auto".
  assert engine_spec.MIN_WIDTH == 4
  assert engine_spec.narrow_widths(64, "auto", "cpu") == (64, 32, 16, 8, 4)
  assert engine_spec.narrow_widths(30, "on", "tpu") == (30, 15, 8, 4)
  assert engine_spec.narrow_widths(64, "auto", "gpu") == ()
  assert engine_spec.narrow_widths(7, "on", "cpu") == ()  # 7 // 2 < 4.
  assert engine_spec.narrow_widths(64, "off", "cpu") == ()
  with pytest.raises(ValueError, match="rollout.narrow"):
    engine_spec.narrow_widths(64, "maybe", "cpu")
  # The continuous engine narrows; the static engine is lock-step.
  assert _spec(engine="continuous", slots_dev=8).widths == (8, 4)
  assert _spec(engine="static").widths == ()


def test_auto_attention_of_the_continuous_engine_on_cpu():
  # Continuous on CPU reads the whole cache ("full"); static keeps "auto"
  # (the window on CPU); accelerators and explicit choices are untouched.
  assert _spec(engine="continuous", slots_dev=4,
               attention="auto").attention == "full"
  assert _spec(engine="static", attention="auto").attention == "auto"
  assert _spec(engine="continuous", slots_dev=8,  # A slot per row.
               attention="auto").attention == "auto"
  assert _spec(engine="continuous", slots_dev=4,
               attention="window").attention == "window"
  assert _spec(engine="continuous", slots_dev=4, attention="auto",
               platform="gpu").attention == "auto"
