"""poly_epo.engine.spec: the slot and page arithmetic of `plan_spec`
(checked by hand-counted pages), the narrowing tail's widths, and errors
that name the config field."""

import pytest

from poly_epo.engine import allocator, settings
from poly_epo.engine.spec import MIN_WIDTH, narrow_widths, plan_spec


def _spec(batch_dev=4, prompt_width=10, slots_dev=0, pages_dev=0,
          pool_rows_dev=0, **kw):
  s = settings.make(**{"num_samples": 2, "max_new_tokens": 20,
                       "platform": "cpu", **kw})
  return plan_spec(s, batch_dev=batch_dev, prompt_width=prompt_width,
                   slots_dev=slots_dev, pages_dev=pages_dev,
                   pool_rows_dev=pool_rows_dev)


def test_paged_arithmetic():
  s = _spec(engine="continuous", cache="paged", page_size=4, pages_dev=40)
  # 10 + 20 slots -> 32 (multiples of the page), 8 pages per row; a slot
  # per row (8) since the pool, not slots, limits; the first insert takes
  # the prompts that fit at the widest: a 10-token prompt holds 2 shared
  # pages + 2 x 6 own (slots 8..30) = 14, and 40 // 14 = 2.
  assert (s.page, s.cache_len, s.pages, s.slots) == (4, 32, 40, 8)
  assert allocator.worst_prompt_pages(10, 2, 20, 4) == 14
  assert s.first == 2 and s.refill == 1
  # Without a pool size: the contiguous memory of the slots.
  s = _spec(engine="continuous", cache="paged", page_size=4, slots_dev=4)
  assert s.pages == 4 * 8 and s.slots == 4
  s = _spec(engine="continuous", cache="paged", page_size=4,
            pool_rows_dev=3)
  assert s.pages == 3 * 8 and s.slots == 8


def test_errors_name_the_field():
  with pytest.raises(ValueError, match="rollout.pages.*14 pages of 4"):
    _spec(engine="continuous", cache="paged", page_size=4, pages_dev=13)
  with pytest.raises(ValueError, match="static engine"):
    _spec(cache="paged", page_size=4, pages_dev=20)
  with pytest.raises(ValueError, match="rollout.slots"):
    _spec(engine="continuous", slots_dev=1)


def test_narrowing_widths():
  # Halves (rounded up) down to MIN_WIDTH rows.
  assert MIN_WIDTH == 4
  assert narrow_widths(64, True) == (64, 32, 16, 8, 4)
  assert narrow_widths(30, True) == (30, 15, 8, 4)
  assert narrow_widths(7, True) == ()  # 7 // 2 < 4.
  assert narrow_widths(64, False) == ()
  # The continuous engine narrows ("auto": on CPU); static is lock-step.
  assert _spec(engine="continuous", slots_dev=8).widths == (8, 4)
  assert _spec(engine="continuous", slots_dev=8,
               platform="gpu", attention="window").widths == ()
  assert _spec(engine="static").widths == ()
