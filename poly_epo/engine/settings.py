"""One frozen owner of a rollout's settings, resolved once.

`RolloutSettings` holds everything a rollout needs from the run config:
the sampling rule (`draw.Sampling`), lengths and special tokens, the
schedule (`rollout.engine`, slots, refill, chunking, the narrowing tail),
the cache layout and the decode kernel, all for one target platform (the
devices the program is compiled for, not the process's default backend).
`make` (keyword settings) and `from_config` (a run config) decide every
"auto" there (`kernels.resolve` over the kernel registry) and refuse every
invalid combination in one line naming the config fields. The trainer, the
evaluation, the planner, `bench` and `sampling.generate` pass this object
down; nothing below re-resolves it.
"""

from __future__ import annotations

import dataclasses

import jax

from poly_epo.engine import kernels
from poly_epo.engine.draw import Sampling

NARROW = ("auto", "on", "off")
FORCED = ("", "uniform", "capped")


def platform_of(mesh) -> str:
  """The platform a program runs on: the mesh's devices' (abstract TPU
  devices included), else the default backend's."""
  if mesh is not None:
    return mesh.devices.flat[0].platform
  return jax.default_backend()


def default_block(platform: str) -> int:
  """Decode attention block: 128 slots on accelerators (lane width), 32 on
  CPU (the embedded tasks' sequences are a few dozen slots)."""
  return 32 if platform == "cpu" else 128


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """A rollout's settings, every "auto" resolved (see the module)."""
  num_samples: int
  max_new_tokens: int
  platform: str
  sampling: Sampling = Sampling()
  eos_id: int = -1  # -1: no EOS stop.
  pad_id: int = 0
  engine: str = "static"  # "static" | "continuous"
  chunk_prompts: int = 0  # Static: prompts per loop over all processes.
  slots: int = 0  # Continuous: decode slots over all devices (0: rows).
  refill: int = 1  # Continuous: prompts prefilled per refill.
  narrow: bool = False  # Continuous: the narrowing tail.
  cache: str = "contiguous"  # "contiguous" | "paged"
  attention: str = "window"  # A registered kernel (`engine.kernels`).
  page_size: int = 0  # Paged: slots per page (0: the block).
  pages: int = 0  # Paged: pool pages over all devices (0: see spec).
  block: int = 32  # Decode attention block (slots).
  keys_ch: bool = False  # Keys [S, K, C, H] (else [S, K, H, C]).
  forced_lengths: str = ""  # Benchmarks: "uniform" | "capped" lengths.
  segment_steps: int = 0  # Decode steps per host round trip (0: with
  #                         `on_done` every max(16, L // 8), else one).

  def replace(self, **changes) -> "RolloutSettings":
    """A copy with `changes` (raw keyword settings, re-resolved)."""
    return make(**{**self.raw(), **changes})

  def raw(self) -> dict:
    """The keyword settings `make` rebuilds this from."""
    d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
         if f.name != "sampling"}
    d["narrow"] = "on" if self.narrow else "off"
    return {**d, **dataclasses.asdict(self.sampling)}

  def describe(self) -> str:
    """One line for logs: the schedule, cache, kernel and sampling rule."""
    s = self.sampling
    return (f"engine={self.engine} cache={self.cache} attention="
            f"{self.attention} slots={self.slots or 'rows'} "
            f"chunk_prompts={self.chunk_prompts or 'all'} temperature="
            f"{s.temperature} top_p={s.top_p} top_k={s.top_k} "
            f"platform={self.platform}")


def make(*, num_samples: int, max_new_tokens: int,
         platform: str | None = None, eos_id: int | None = -1,
         pad_id: int = 0, engine: str = "static", chunk_prompts: int = 0,
         slots: int = 0, refill: int = 1, narrow: str = "auto",
         cache: str = "contiguous", attention: str = "window",
         page_size: int = 0, pages: int = 0, block: int = 0,
         keys_ch: bool | None = None, forced_lengths: str = "",
         segment_steps: int = 0, **sampling) -> RolloutSettings:
  """Resolved settings from keyword settings (`rollout.*` names; the
  sampling rule's fields as keywords). `platform`: the target devices'
  (default: the default backend's). ValueError naming the field."""
  platform = platform or jax.default_backend()
  rule = Sampling(**sampling)
  rule.check()

  def need(cond, field, msg):
    if not cond:
      raise ValueError(f"{field}={msg}")

  need(num_samples >= 1, "num_samples", f"{num_samples} must be >= 1")
  need(max_new_tokens >= 1, "max_new_tokens",
       f"{max_new_tokens} must be >= 1")
  need(narrow in NARROW, "rollout.narrow", f"{narrow!r}: one of {NARROW}")
  need(forced_lengths in FORCED, "forced_lengths",
       f"{forced_lengths!r}: one of {FORCED}")
  for field, value in (("rollout.chunk_prompts", chunk_prompts),
                       ("rollout.slots", slots),
                       ("rollout.page_size", page_size),
                       ("rollout.pages", pages), ("rollout.block", block),
                       ("segment_steps", segment_steps)):
    need(value >= 0, field, f"{value} must be >= 0")
  need(refill >= 1, "rollout.refill", f"{refill} must be >= 1")
  cache, attention = kernels.resolve(attention, cache, platform, engine)
  return RolloutSettings(
      num_samples=int(num_samples), max_new_tokens=int(max_new_tokens),
      platform=platform, sampling=rule,
      eos_id=-1 if eos_id is None else int(eos_id), pad_id=int(pad_id),
      engine=engine, chunk_prompts=int(chunk_prompts), slots=int(slots),
      refill=int(refill),
      # "auto" narrows on CPU only, where a decode step costs each of its
      # rows (on accelerators a step's cost is reading the weights and each
      # busy row's own cache, which a narrower step does not cut, and every
      # width is one more decode program to compile).
      narrow=narrow == "on" or (narrow == "auto" and platform == "cpu"),
      cache=cache, attention=attention, page_size=int(page_size),
      pages=int(pages), block=int(block or default_block(platform)),
      # Keys [S, K, C, H] like the values on accelerators: the TPU
      # compiler writes one position per row in place there, but copies the
      # whole cache for the transposed layout (measured: 2.7 GB vs 2.5 MB
      # per write of a 64-row, 5,120-slot layer). XLA:CPU decodes long
      # caches faster with transposed keys (`bench rollout --preset bench-s
      # --lengths uniform`, 288 slots: 15.9k vs 12.7k useful tok/s static,
      # 25.1k vs 19.6k continuous).
      keys_ch=(platform != "cpu") if keys_ch is None else bool(keys_ch),
      forced_lengths=forced_lengths, segment_steps=int(segment_steps))


CONFIG_KEYS = ("engine", "chunk_prompts", "slots", "refill", "narrow",
               "cache", "attention", "page_size", "pages")


def config_options(cfg) -> dict:
  """A run config's rollout keywords for `make`: its `rollout.*` settings
  and its sampling rule's fields (temperature, top_p, top_k, ...)."""
  r = cfg.rollout
  rule = {f.name: cfg[f.name] for f in dataclasses.fields(Sampling)}
  return {**{k: r[k] for k in CONFIG_KEYS if k in r}, **rule}


def from_config(cfg, platform: str, *, eos_id: int | None = -1,
                pad_id: int = 0, **overrides) -> RolloutSettings:
  """A run config's rollout settings on `platform` (`config_options`,
  num_samples and max_new_tokens); `overrides` replace any keyword of
  `make`."""
  return make(**{
      "num_samples": cfg.num_samples, "max_new_tokens": cfg.max_new_tokens,
      "platform": platform, "eos_id": eos_id, "pad_id": pad_id,
      **config_options(cfg), **overrides})
