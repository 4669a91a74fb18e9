"""The engine's static settings: `Spec` (one device's program) and
`plan_spec` (from the rollout's settings, errors naming the config fields),
the cache and attention each platform resolves to."""

from __future__ import annotations

from typing import NamedTuple

import jax

from poly_epo.models import paged

ENGINES = ("static", "continuous")
CACHES = ("contiguous", "paged", "auto")


def platform_of(mesh) -> str:
  """The platform a program runs on: the mesh's devices' (abstract TPU
  devices included), else the default backend's."""
  if mesh is not None:
    return mesh.devices.flat[0].platform
  return jax.default_backend()


def resolve_cache(cache: str, attention: str, platform: str) -> str:
  """"auto": the paged cache where its kernel runs (TPU, with attention
  "auto" or "tpu_paged"), else contiguous (on GPU the Pallas kernel reads
  the contiguous cache)."""
  if cache != "auto":
    return cache
  kernel = platform == "tpu" and attention in ("auto", "tpu_paged")
  return "paged" if kernel else "contiguous"


class Spec(NamedTuple):
  """Static settings of one engine program."""
  num_samples: int
  max_new_tokens: int
  slots: int  # per device
  first: int  # prompts inserted before the loop
  refill: int  # prompts inserted per refill (0: never)
  segment_steps: int
  cache_len: int
  temperature: float
  top_k: int
  top_p: float
  eos_id: int
  pad_id: int
  attention: str
  block: int
  forced_lengths: str = ""  # Benchmarks: "uniform" | "capped" (see below).
  keys_ch: bool = False  # Keys [S, K, C, H] (accelerators), not [S, K, H, C].
  page: int = 0  # Slots per page of the paged cache (0: contiguous).
  pages: int = 0  # Pages in the device's pool (paged).
  reserve: int = 0  # Oldest rows whose pages are kept (paged.reserve_rows).
  widths: tuple = ()  # Slot counts the tail narrows through, widest first
  #                     ((): all slots every step; see `narrow_widths`).


NARROW = ("auto", "on", "off")
MIN_WIDTH = 4  # The narrowest decode step (rows) the tail narrows to.


def narrow_widths(slots: int, narrow: str, platform: str) -> tuple:
  """The decode widths of a narrowing tail: slots, then halves down to
  MIN_WIDTH rows. "auto" narrows on CPU only, where a decode step costs
  each of its rows (on accelerators a step's cost is reading the weights
  and each busy row's own cache, which a narrower step does not cut, and
  every width is one more decode program to compile)."""
  if narrow not in NARROW:
    raise ValueError(f"rollout.narrow={narrow!r} must be one of {NARROW}")
  if narrow == "off" or (narrow == "auto" and platform != "cpu"):
    return ()
  out = [slots]
  while out[-1] // 2 >= MIN_WIDTH:
    out.append(-(-out[-1] // 2))
  return tuple(out) if len(out) > 1 else ()


def default_block(backend: str | None = None) -> int:
  """Decode attention block: 128 slots on accelerators (lane width), 32 on
  CPU (the embedded tasks' sequences are a few dozen slots)."""
  return 32 if (backend or jax.default_backend()) == "cpu" else 128


def default_keys_ch(backend: str | None = None) -> bool:
  """Keys stored [S, K, C, H] on accelerators: the TPU compiler writes one
  position per row in place there, but copies the whole cache for the
  transposed layout (measured: 2.7 GB vs 2.5 MB per write of a 64-row,
  5,120-slot layer); XLA:CPU decodes faster with transposed keys."""
  return (backend or jax.default_backend()) != "cpu"


def plan_spec(*, batch_dev: int, prompt_width: int, num_samples: int,
              max_new_tokens: int, engine: str = "static", slots_dev: int = 0,
              refill: int = 1, attention: str = "window", block: int = 0,
              segment_steps: int = 0, temperature: float = 1.0,
              top_k: int = 0, top_p: float = 1.0, eos_id: int = -1,
              pad_id: int = 0, forced_lengths: str = "",
              keys_ch: bool | None = None, cache: str = "contiguous",
              page_size: int = 0, pages_dev: int = 0, pool_rows_dev: int = 0,
              platform: str | None = None, narrow: str = "auto") -> Spec:
  """The static settings of one device's engine, errors naming the fields.
  `platform`: the devices the program is for (default: the default
  backend's); it resolves the cache, the attention, the default block and
  key layout, and "auto" narrowing.
  Paged: `pages_dev` pages, or the memory of `pool_rows_dev` contiguous
  rows (then, with no `slots_dev`, a slot for every row). `narrow`: once
  the queue is empty, the continuous engine moves its busy rows to the
  first slots and decodes only as many slots as they need
  (`narrow_widths`); the static engine never narrows (lock-step)."""
  if engine not in ENGINES:
    raise ValueError(f"rollout.engine={engine!r} must be one of {ENGINES}")
  if cache not in CACHES:
    raise ValueError(f"rollout.cache={cache!r} must be one of {CACHES}")
  platform = platform or jax.default_backend()
  cache = resolve_cache(cache, attention, platform)
  k = num_samples
  small_pool = cache == "paged" and bool(pages_dev or pool_rows_dev)
  if engine == "continuous" and small_pool and not slots_dev:
    slots_dev = batch_dev * k  # Refills wait for pages, not slots.
  if engine == "static" or not slots_dev or (
      slots_dev >= batch_dev * k and not small_pool):
    slots_dev, first, refill = batch_dev * k, batch_dev, 0
  else:
    slots_dev = min(slots_dev, batch_dev * k)
    if refill < 1:
      raise ValueError(f"rollout.refill={refill} must be >= 1")
    if slots_dev < k * refill:
      raise ValueError(
          f"rollout.slots gives {slots_dev} decode slots per device, fewer "
          f"than num_samples x rollout.refill = {k} x {refill}: a refill "
          f"could never fit")
    first = min(batch_dev, slots_dev // k)
  block = min(block or default_block(platform),
              -(-(prompt_width + max_new_tokens) // 8) * 8)
  page, pages = 0, 0
  if (cache == "contiguous" and attention == "auto" and platform == "cpu"
      and refill):
    # Refilled slots on CPU read the whole cache: some busy row is nearly
    # always long, so the window would span almost all of it, and XLA:CPU
    # slicing the window out costs more than the slots it skips (bench-s,
    # `bench rollout --attention full` vs window: +30% useful tok/s at 288
    # slots, +13-26% at 1,024; the same tokens). Without refills the
    # window grows with the rows, and "auto" keeps it.
    attention = "full"
  if cache == "contiguous" and attention == "tpu_paged":
    raise ValueError("rollout.attention='tpu_paged' reads a paged cache: "
                     "set rollout.cache='paged'")
  if cache == "paged":
    attention = paged.resolve(attention, platform)
    page = page_size or block
    if page < 1:
      raise ValueError(f"rollout.page_size={page_size} must be >= 1")
    block = page
  cache_len = -(-(prompt_width + max_new_tokens) // block) * block
  if page:
    per_row = cache_len // page
    pages = pages_dev or (pool_rows_dev or slots_dev) * per_row
    worst = paged.worst_prompt_pages(prompt_width, k, max_new_tokens, page)
    if pages < worst:
      raise ValueError(
          f"rollout.pages gives {pages} pages per device, fewer than one "
          f"prompt of {prompt_width} tokens and its {k} samples of "
          f"{max_new_tokens} tokens can hold ({worst} pages of {page})")
    if refill:  # The first insert: what fits at the widest prompts (a
      # prefill of prompts that cannot be admitted would be thrown away).
      first = min(first, pages // worst)
    if refill == 0 and pages < slots_dev * per_row:
      raise ValueError(
          f"rollout.pages gives {pages} pages per device; the static "
          f"engine inserts all {slots_dev} rows at once and needs "
          f"{slots_dev * per_row} (use rollout.engine='continuous')")
  return Spec(num_samples=k, max_new_tokens=max_new_tokens, slots=slots_dev,
              first=first, refill=refill,
              segment_steps=segment_steps or 2**30, cache_len=cache_len,
              temperature=float(temperature), top_k=int(top_k),
              top_p=float(top_p), eos_id=int(eos_id), pad_id=int(pad_id),
              attention=attention, block=block,
              forced_lengths=forced_lengths,
              keys_ch=default_keys_ch(platform) if keys_ch is None
              else keys_ch,
              page=page, pages=pages,
              reserve=paged.reserve_rows(pages, cache_len // page)
              if page else 0,
              widths=narrow_widths(slots_dev, narrow, platform)
              if engine == "continuous" else ())
