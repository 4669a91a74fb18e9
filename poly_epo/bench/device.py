"""What the benchmarks need to know about the accelerator: its name, the
HBM bandwidth and bf16 peak measured on the lent cards, and peak memory."""

from __future__ import annotations

import jax

# Measured on these cards (not datasheet figures): HBM bandwidth in bytes/s,
# dense bf16 matmul peak in FLOP/s.
CARDS = {
    "H100": {"hbm_bytes_s": 3.0e12, "bf16_flops": 790e12},
    "H200": {"hbm_bytes_s": 4.3e12, "bf16_flops": 790e12},
}


def card() -> str:
  return jax.devices()[0].device_kind


def card_figures() -> dict:
  kind = card()
  for name, figures in CARDS.items():
    if name in kind:
      return figures
  return {}


def peak_memory_bytes() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def timed(fn, repeats: int):
  """(seconds of the first call (compile included), median seconds of
  `repeats` more, the last call's result)."""
  import statistics
  import time
  t0 = time.perf_counter()
  out = fn()
  first = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return first, statistics.median(times), out
