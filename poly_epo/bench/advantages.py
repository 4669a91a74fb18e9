"""Set-advantage kernel speed vs a per-prompt, per-set Python loop.

  python -m poly_epo.bench advantages [--batch 128] [--repeats 5]

The reference loops over prompts and over every subset in plain Python, the
way a straightforward PyTorch implementation of the paper does, and is timed
once per configuration (it is slow). Both use the polychromic objective and
the mean reduction; the kernel's result is checked against the reference.
"""

from __future__ import annotations

import argparse
import itertools
import math
import time

import jax
import numpy as np

from poly_epo import set_rl
from poly_epo.bench.device import timed

CONFIGS = ((8, 4), (16, 4), (16, 8))


def reference_loop(rewards, labels, set_size):
  """Plain Python: per prompt, per set."""
  out = np.zeros_like(rewards, dtype=np.float64)
  for b in range(rewards.shape[0]):
    r, l = rewards[b].tolist(), labels[b].tolist()
    sets = list(itertools.combinations(range(len(r)), set_size))
    scores = []
    for s in sets:
      distinct = len({l[i] for i in s if l[i] != set_rl.DEGENERATE})
      scores.append(sum(r[i] for i in s) / set_size * distinct / set_size)
    base = sum(scores) / len(scores)
    total, count = [0.0] * len(r), [0] * len(r)
    for f, s in zip(scores, sets):
      for i in s:
        total[i] += f - base
        count[i] += 1
    out[b] = [t / c for t, c in zip(total, count)]
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(prog="python -m poly_epo.bench advantages")
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args(argv)
  rs = np.random.RandomState(0)
  print(f"device={jax.devices()[0].platform} B={args.batch} objective="
        f"polychromic reduce=mean (median of {args.repeats} kernel calls)")
  print(f"{'N':>3} {'n':>3} {'sets':>6} {'kernel ms':>10} {'compile s':>10} "
        f"{'python loop ms':>15} {'speed-up':>9}")
  for big_n, n in CONFIGS:
    rewards = (rs.rand(args.batch, big_n) < 0.5).astype(np.float32)
    labels = rs.randint(-1, 5, (args.batch, big_n)).astype(np.int32)

    def call():
      return jax.block_until_ready(
          set_rl.set_advantages(rewards, labels, set_size=n))
    first, t_kernel, got = timed(call, args.repeats)
    t0 = time.perf_counter()
    want = reference_loop(rewards, labels, n)
    t_ref = time.perf_counter() - t0
    err = float(np.abs(np.asarray(got) - want).max())
    if err > 1e-5:
      raise AssertionError(f"kernel and reference disagree by {err}")
    print(f"{big_n:>3} {n:>3} {math.comb(big_n, n):>6} {t_kernel * 1e3:>10.2f}"
          f" {first - t_kernel:>10.2f} {t_ref * 1e3:>15.1f} "
          f"{t_ref / t_kernel:>8.0f}x")
  return 0
