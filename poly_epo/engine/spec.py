"""One device program's static settings: `Spec`, from the run's resolved
`RolloutSettings` and one call's sizes (`plan_spec`): slots, the first
insert, refills, the cache length, the page pool and the narrowing tail.
Errors name the config fields."""

from __future__ import annotations

from typing import NamedTuple

from poly_epo.engine import allocator
from poly_epo.engine.kernels.dense import largest_divisor
from poly_epo.engine.settings import RolloutSettings

MIN_WIDTH = 4  # The narrowest decode step (rows) the tail narrows to.


class Spec(NamedTuple):
  """Static settings of one engine program (one device's share)."""
  settings: RolloutSettings
  slots: int  # per device
  first: int  # prompts inserted before the loop
  refill: int  # prompts inserted per refill (0: never)
  segment_steps: int
  cache_len: int
  block: int
  page: int = 0  # Slots per page of the paged cache (0: contiguous).
  pages: int = 0  # Pages in the device's pool (paged).
  reserve: int = 0  # Oldest rows whose pages are kept (allocator).
  prompt_width: int = 0  # Prompt slots (the prefix cache's prompt part).
  widths: tuple = ()  # Slot counts the tail narrows through, widest first
  #                     ((): all slots every step; see `narrow_widths`).

  @property
  def num_samples(self) -> int:
    return self.settings.num_samples

  @property
  def max_new_tokens(self) -> int:
    return self.settings.max_new_tokens

  @property
  def eos_id(self) -> int:
    return self.settings.eos_id

  @property
  def pad_id(self) -> int:
    return self.settings.pad_id

  @property
  def attention(self) -> str:
    return self.settings.attention

  @property
  def keys_ch(self) -> bool:
    return self.settings.keys_ch


def narrow_widths(slots: int, narrow: bool) -> tuple:
  """The decode widths of a narrowing tail: slots, then halves down to
  MIN_WIDTH rows (() when not narrowing or too few slots)."""
  if not narrow:
    return ()
  out = [slots]
  while out[-1] // 2 >= MIN_WIDTH:
    out.append(-(-out[-1] // 2))
  return tuple(out) if len(out) > 1 else ()


def cache_shape(s: RolloutSettings, need: int) -> tuple:
  """(block, cache_len) for rows of up to `need` tokens.

  Paged: the page (`s.page_size`, or the block) and a whole number of
  pages. Accelerators: the block (their kernels' tile, e.g. 128 lanes) and
  a whole number of blocks. CPU, contiguous: the cache rounded up to 16
  slots only, and the block the largest multiple of 16 that divides it, up
  to `s.block`. On XLA:CPU every cache slot costs, read or not: 48-token
  rows decoded 7-10% slower in a 64-slot cache (block 32) than in a
  48-slot one (block 16), the same tokens (`bench sampler`, README)."""
  block = min(s.block, -(-need // 8) * 8)
  if s.cache == "paged":
    block = s.page_size or block
  elif s.platform == "cpu" and block >= 8:  # Contiguous (and prefix: rope).
    g = min(16, block)
    fit = -(-need // g) * g
    return largest_divisor(fit // g, block // g) * g, fit
  return block, -(-need // block) * block


def plan_spec(s: RolloutSettings, *, batch_dev: int, prompt_width: int,
              slots_dev: int = 0, pages_dev: int = 0, pool_rows_dev: int = 0,
              segment_steps: int = 0) -> Spec:
  """The static settings of one device's engine for `batch_dev` prompts of
  up to `prompt_width` tokens. Continuous: `slots_dev` decode slots (0: a
  slot per row). Paged: `pages_dev` pages, or the memory of `pool_rows_dev`
  contiguous rows (then, with no `slots_dev`, a slot for every row). The
  continuous engine narrows its tail with `s.narrow`; the static engine is
  lock-step and never does."""
  k, length = s.num_samples, s.max_new_tokens
  paged = s.cache == "paged"
  small_pool = paged and bool(pages_dev or pool_rows_dev)
  if s.engine == "continuous" and small_pool and not slots_dev:
    slots_dev = batch_dev * k  # Refills wait for pages, not slots.
  if s.engine == "static" or not slots_dev or (
      slots_dev >= batch_dev * k and not small_pool):
    slots_dev, first, refill = batch_dev * k, batch_dev, 0
  else:
    slots_dev, refill = min(slots_dev, batch_dev * k), s.refill
    if slots_dev < k * refill:
      raise ValueError(
          f"rollout.slots gives {slots_dev} decode slots per device, fewer "
          f"than num_samples x rollout.refill = {k} x {refill}: a refill "
          f"could never fit")
    first = min(batch_dev, slots_dev // k)
  block, cache_len = cache_shape(s, prompt_width + length)
  page, pages = 0, 0
  if paged:
    page = block
    per_row = cache_len // page
    pages = pages_dev or (pool_rows_dev or slots_dev) * per_row
    worst = allocator.worst_prompt_pages(prompt_width, k, length, page)
    if pages < worst:
      raise ValueError(
          f"rollout.pages gives {pages} pages per device, fewer than one "
          f"prompt of {prompt_width} tokens and its {k} samples of "
          f"{length} tokens can hold ({worst} pages of {page})")
    if refill:  # The first insert: what fits at the widest prompts (a
      # prefill of prompts that cannot be admitted would be thrown away).
      first = min(first, pages // worst)
    if refill == 0 and pages < slots_dev * per_row:
      raise ValueError(
          f"rollout.pages gives {pages} pages per device; the static "
          f"engine inserts all {slots_dev} rows at once and needs "
          f"{slots_dev * per_row} (use rollout.engine='continuous')")
  return Spec(settings=s, slots=slots_dev, first=first, refill=refill,
              segment_steps=segment_steps or 2**30, cache_len=cache_len,
              block=block, page=page, pages=pages,
              prompt_width=prompt_width,
              reserve=allocator.reserve_rows(pages, cache_len // page)
              if page else 0,
              widths=narrow_widths(slots_dev, s.narrow)
              if s.engine == "continuous" else ())
