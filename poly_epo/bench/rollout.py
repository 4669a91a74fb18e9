"""Rollout engines side by side on long, ragged responses.

  python -m poly_epo.bench rollout --preset bench-s --lengths uniform [--json]

Every row's response length is forced by a hash of its key (EOS exactly
there, never before: `engine.forced_length`), so every engine decodes the
same sequences: "uniform" lengths on [L/20, L], "capped" 30% at L and the
rest uniform below. Prompts have ragged lengths on [P/4, P]. Three runs of
the same rollout (B prompts x k samples, the same memory: a static chunk of
`--chunk` prompts holds as many rows as the continuous engine's slots):

- static_full: lock-step chunks reading every cache slot each step (the
  sampler before the engine: `--attention full`);
- static: lock-step chunks, windowed attention (the filled blocks only);
- continuous: `--chunk x k` slots refilled from the whole batch's queue.

Reported per run: wall seconds (median of `--repeats`, after a compile
run), useful tokens/s (response tokens / wall), executed row-steps (decode
steps x slots) vs useful row-steps (response tokens made by decode steps),
and whether the tokens equal static's.
"""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
from flax import nnx

from poly_epo import rollout
from poly_epo.bench.device import timed
from poly_epo.models import init_model, preset

EOS = 1
# Per preset: prompts, samples, prompt width, new tokens, static chunk.
DEFAULTS = {"bench-s": (64, 8, 32, 256, 8), "bench-m": (32, 8, 32, 128, 4)}


def _parse(argv):
  ap = argparse.ArgumentParser(prog="python -m poly_epo.bench rollout")
  ap.add_argument("--preset", default="bench-s", choices=sorted(DEFAULTS))
  ap.add_argument("--lengths", default="uniform",
                  choices=("uniform", "capped"))
  ap.add_argument("--prompts", type=int, help="B (default per preset)")
  ap.add_argument("--samples", type=int, help="k")
  ap.add_argument("--prompt-len", type=int, help="P (widest prompt)")
  ap.add_argument("--new-tokens", type=int, help="L")
  ap.add_argument("--chunk", type=int,
                  help="static chunk in prompts; continuous slots = chunk x k")
  ap.add_argument("--refill", type=int, default=1)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--json", action="store_true", help="one JSON object")
  args = ap.parse_args(argv)
  b, k, p, l, c = DEFAULTS[args.preset]
  args.prompts = args.prompts or b
  args.samples = args.samples or k
  args.prompt_len = args.prompt_len or p
  args.new_tokens = args.new_tokens or l
  args.chunk = args.chunk or c
  return args


def _prompts(args, vocab: int):
  rs = np.random.RandomState(0)
  b, p = args.prompts, args.prompt_len
  tokens = rs.randint(2, vocab, (b, p)).astype(np.int32)
  lengths = rs.randint(max(1, p // 4), p + 1, b)
  mask = np.arange(p)[None] >= (p - lengths)[:, None]  # Left-padded.
  return np.where(mask, tokens, 0), mask


def _run(args, policy, tokens, mask, **kw):
  graphdef, params, rest = policy
  stats = {}

  def once():
    stats.clear()
    out = rollout.rollout(
        graphdef, params, rest, tokens, mask, np.arange(len(tokens)),
        rng=jax.random.key(0), num_samples=args.samples,
        max_new_tokens=args.new_tokens, eos_id=EOS, pad_id=0,
        forced_lengths=args.lengths, stats=stats, **kw)
    return out

  first, wall, out = timed(once, args.repeats)
  useful = int(out.lengths.sum())
  rows = out.lengths.size
  return out, {
      "wall_s": wall, "compile_s": max(first - wall, 0.0),
      "useful_tokens": useful, "useful_tokens_per_s": useful / wall,
      "executed_row_steps": stats["slot_steps"],
      "useful_row_steps": useful - rows,
      "decode_steps": stats["steps"], "slots": stats["slots"],
      "host_round_trips": stats["segments"]}


def bench(args) -> dict:
  cfg = preset(args.preset, param_dtype=args.dtype, dtype=args.dtype)
  policy = nnx.split(init_model(cfg, seed=0), nnx.Param, ...)
  tokens, mask = _prompts(args, cfg.vocab_size)
  k = args.samples
  ref, static = _run(args, policy, tokens, mask, chunk_prompts=args.chunk)
  full, static_full = _run(args, policy, tokens, mask,
                           chunk_prompts=args.chunk, attention="full")
  cont, continuous = _run(args, policy, tokens, mask, engine="continuous",
                          slots=args.chunk * k, refill=args.refill)
  same = lambda o: bool((o.tokens == ref.tokens).all() and
                        (o.mask == ref.mask).all())
  static_full["tokens_equal_static"] = same(full)
  return {
      "device": jax.devices()[0].platform, "preset": args.preset,
      "params": cfg.num_params, "lengths": args.lengths,
      "prompts": args.prompts, "samples": k, "prompt_len": args.prompt_len,
      "new_tokens": args.new_tokens, "chunk_prompts": args.chunk,
      "static_full": static_full, "static": static, "continuous": continuous,
      "tokens_equal": same(cont),
      "speedup": continuous["useful_tokens_per_s"] /
                 static["useful_tokens_per_s"],
      "speedup_vs_full": continuous["useful_tokens_per_s"] /
                         static_full["useful_tokens_per_s"]}


def main(argv=None):
  args = _parse(argv)
  res = bench(args)
  if args.json:
    print(json.dumps(res))
    return 0
  print(f"device={res['device']} preset={res['preset']} "
        f"params={res['params'] / 1e6:.2f}M lengths={res['lengths']} "
        f"B={res['prompts']} k={res['samples']} P<={res['prompt_len']} "
        f"L={res['new_tokens']} static chunk={res['chunk_prompts']} prompts "
        f"(= continuous slots {res['chunk_prompts'] * res['samples']})")
  print(f"{'engine':<12} {'wall s':>8} {'useful tok/s':>13} "
        f"{'executed row-steps':>19} {'useful':>9} {'round trips':>12}")
  for name in ("static_full", "static", "continuous"):
    r = res[name]
    print(f"{name:<12} {r['wall_s']:>8.2f} {r['useful_tokens_per_s']:>13.0f} "
          f"{r['executed_row_steps']:>19d} {r['useful_row_steps']:>9d} "
          f"{r['host_round_trips']:>12d}")
  print(f"continuous / static: {res['speedup']:.2f}x useful tokens/s "
        f"({res['speedup_vs_full']:.2f}x vs static_full); tokens equal: "
        f"{res['tokens_equal']}")
  return 0
