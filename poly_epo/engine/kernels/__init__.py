"""The decode-attention kernels, by name (`rollout.attention`).

A kernel is one module of this package that calls `register(Kernel(...))`
when imported: its name, the cache layouts it reads ("contiguous": a cache
row per slot; "paged": a pool of pages and a page table per slot,
`engine/pool.py`; "prefix": each prompt's keys and values once and a
response row per slot, the static engine's), the platforms it runs on per
layout, where `"auto"` picks it, and how the planner costs it. `"auto"`
and `rollout.cache="auto"` are rules over this registry (`resolve`),
decided once per run by `engine.settings`. Adding a kernel: a module here
and one line in `_BUILTIN` below.

Every kernel is called as
  attend(q_NKGH, k, v, length_N, *, block, window, keys_ch, table_NM,
         platform) -> [N, K, G, H]
with the new token's queries grouped by kv head, the layer's keys and
values (contiguous: keys [N, K, H, C], or [N, K, C, H] with `keys_ch`,
values [N, K, C, H]; paged: [K, NP + 1, page, H] pools and page tables
`table_NM`; prefix: `kernels/prefix.py`), `length_N` int32 filled slots
(the new token included; >= 1), `block` slots per block (the cache length
a multiple of it), `window` a static number of slots to read or None (the
planner's cost model), and `platform` the devices the program is compiled
for.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Callable

LAYOUTS = ("contiguous", "paged", "prefix")
ENGINES = ("static", "continuous")


@dataclasses.dataclass(frozen=True)
class Kernel:
  """One decode-attention kernel.

  runs: per layout, the platforms it runs on (a layout not listed is not
    served). auto: (platform, layout, engine) triples where
    `rollout.attention="auto"` picks it ("*" matches any engine).
  planned_as: the kernel the planner compiles in its place ("" = itself;
    custom calls are opaque to the compiler's cost model). own_fill: each
    row reads only its own filled slots (the planner's per-row cost).
  refuse: per platform, why it does not run there (the error's text)."""
  name: str
  attend: Callable
  runs: dict
  auto: tuple = ()
  planned_as: str = ""
  own_fill: bool = False
  refuse: dict = dataclasses.field(default_factory=dict)


_REGISTRY: dict = {}
_BUILTIN = ("xla", "pallas_gpu", "tpu_paged", "prefix")


def register(kernel: Kernel) -> Kernel:
  if kernel.name in _REGISTRY or kernel.name == "auto":
    raise ValueError(f"decode kernel {kernel.name!r} registered twice")
  _REGISTRY[kernel.name] = kernel
  return kernel


def _load():
  for mod in _BUILTIN:
    importlib.import_module(f"{__name__}.{mod}")


def names() -> tuple:
  """Every kernel's name, and "auto"."""
  return tuple(_REGISTRY) + ("auto",)


def get(name: str) -> Kernel:
  if name not in _REGISTRY:
    raise ValueError(f"rollout.attention={name!r}: one of {names()}")
  return _REGISTRY[name]


def _auto_kernel(platform: str, layout: str, engine: str):
  for k in _REGISTRY.values():
    if any(p == platform and lay == layout and e in ("*", engine)
           for p, lay, e in k.auto):
      return k
  return None


def resolve(attention: str, cache: str, platform: str,
            engine: str = "static") -> tuple:
  """(cache layout, kernel name) for `rollout.attention` and
  `rollout.cache` on `platform`, every "auto" decided; a combination that
  cannot run is a ValueError naming the fields.

  cache "auto": the layout the named kernel reads (contiguous when it reads
  it); with attention "auto", "prefix" for the static engine where a kernel
  reads it by default (CPU), else "paged" where the paged layout's auto
  kernel reads only pages (the TPU kernel on TPU), else contiguous. The
  prefix layout serves the static engine only (its rows are lock-step, in
  prompt order)."""
  if cache not in LAYOUTS + ("auto",):
    raise ValueError(f"rollout.cache={cache!r}: one of "
                     f"{LAYOUTS + ('auto',)}")
  if engine not in ENGINES:
    raise ValueError(f"rollout.engine={engine!r}: one of {ENGINES}")
  if cache == "auto":
    if attention == "auto":
      pk = _auto_kernel(platform, "paged", engine)
      if engine == "static" and _auto_kernel(platform, "prefix", engine):
        cache = "prefix"
      elif pk is not None and set(pk.runs) == {"paged"}:
        cache = "paged"
      else:
        cache = "contiguous"
    else:
      cache = next(lay for lay in LAYOUTS if lay in get(attention).runs)
  if cache == "prefix" and engine != "static":
    raise ValueError("rollout.cache='prefix' holds each prompt once for "
                     "its samples' lock-step rows: it needs rollout.engine="
                     "'static' (or rollout.cache='auto')")
  if attention == "auto":
    k = _auto_kernel(platform, cache, engine)
    if k is None:
      raise ValueError(f"rollout.attention='auto': no kernel runs a "
                       f"{cache} cache on {platform}")
  else:
    k = get(attention)
  if cache not in k.runs:
    served = " or ".join(repr(lay) for lay in k.runs)
    raise ValueError(f"rollout.attention={k.name!r} reads a {served} "
                     f"cache: set rollout.cache={served}")
  if platform not in k.runs[cache]:
    why = k.refuse.get(platform, "")
    raise ValueError(f"rollout.attention={k.name!r} with rollout.cache="
                     f"{cache!r} does not run on {platform}"
                     + (f": {why}" if why else ""))
  return cache, k.name


def attend(name: str, q_NKGH, k, v, length_N, **kw):
  """Dispatch to the kernel `name` (resolved: never "auto")."""
  return get(name).attend(q_NKGH, k, v, length_N, **kw)


_load()
