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
- continuous: `--chunk x k` slots refilled from the whole batch's queue;
- with `--kernel`: continuous_pallas, the continuous engine with the
  Pallas GPU decode kernel (`rollout.attention="pallas"`: each row reads its
  own fill; on CPU it runs interpreted, so use it on GPU);
- with `--paged`: continuous_paged, the continuous engine over the paged
  cache (`rollout.cache="paged"`) with `--paged-slots` slots (default:
  twice continuous's) in the contiguous cache's memory (`--pages`, default
  continuous's slots x its pages per row): pages follow the tokens
  decoded, a prompt's pages are shared by its samples, rows wait for a
  page when the pool is short.

`--attention` sets the static and continuous runs' decode attention
(default "window"). On a GPU the report adds each run's weight + KV bytes
per decode step against the card's measured HBM bandwidth (roofline ms).

Reported per run: wall seconds (median of `--repeats`, after a compile
run), useful tokens/s (response tokens / wall), executed row-steps (decode
steps x slots) vs useful row-steps (response tokens made by decode steps),
and whether the tokens equal static's.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import numpy as np
from flax import nnx

from poly_epo import rollout
from poly_epo.engine import kernels, settings
from poly_epo.bench.device import card_figures, timed
from poly_epo.models import init_model, preset

EOS = 1
# Per preset: prompts, samples, prompt width, new tokens, static chunk.
DEFAULTS = {"bench-s": (64, 8, 32, 256, 8), "bench-m": (32, 8, 32, 128, 4),
            "qwen3-0.6b": (32, 8, 64, 384, 8)}


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
  ap.add_argument("--attention", default="window",
                  choices=[n for n in kernels.names() if n == "auto" or
                           "contiguous" in kernels.get(n).runs],
                  help="decode attention of the static and continuous runs")
  ap.add_argument("--kernel", action="store_true",
                  help="also run continuous with the Pallas GPU kernel")
  ap.add_argument("--paged", action="store_true",
                  help="also run continuous over the paged cache")
  ap.add_argument("--paged-slots", type=int, default=0,
                  help="its slots (default: 2 x --chunk x k)")
  ap.add_argument("--pages", type=int, default=0,
                  help="its pool (default: the contiguous cache's memory)")
  ap.add_argument("--page-size", type=int, default=0,
                  help="slots per page (default: the attention block)")
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
        rng=jax.random.key(0), stats=stats, settings=settings.make(
            num_samples=args.samples, max_new_tokens=args.new_tokens,
            eos_id=EOS, pad_id=0, forced_lengths=args.lengths, **kw))
    return out

  first, wall, out = timed(once, args.repeats)
  useful = int(out.lengths.sum())
  rows = out.lengths.size
  print(f"[bench rollout] {kw}: {wall:.2f} s, {useful / wall:,.0f} useful "
        f"tok/s, compile {max(first - wall, 0.0):.1f} s", file=sys.stderr,
        flush=True)  # Progress: each engine's line as it finishes.
  return out, {
      "wall_s": wall, "compile_s": max(first - wall, 0.0),
      "useful_tokens": useful, "useful_tokens_per_s": useful / wall,
      "executed_row_steps": stats["slot_steps"],
      "useful_row_steps": useful - rows,
      "decode_steps": stats["steps"], "slots": stats["slots"],
      "host_round_trips": stats["segments"],
      **{name: stats[name] for name in ("pages", "page_size", "pages_peak",
                                        "page_waits") if name in stats}}


def bench(args) -> dict:
  cfg = preset(args.preset, param_dtype=args.dtype, dtype=args.dtype)
  policy = nnx.split(init_model(cfg, seed=0), nnx.Param, ...)
  tokens, mask = _prompts(args, cfg.vocab_size)
  k = args.samples
  ref, static = _run(args, policy, tokens, mask, chunk_prompts=args.chunk,
                     attention=args.attention)
  full, static_full = _run(args, policy, tokens, mask,
                           chunk_prompts=args.chunk, attention="full")
  cont, continuous = _run(args, policy, tokens, mask, engine="continuous",
                          slots=args.chunk * k, refill=args.refill,
                          attention=args.attention)
  same = lambda o: bool((o.tokens == ref.tokens).all() and
                        (o.mask == ref.mask).all())
  static_full["tokens_equal_static"] = same(full)
  extra = {}
  if args.kernel:
    kern, extra["continuous_pallas"] = _run(
        args, policy, tokens, mask, engine="continuous",
        slots=args.chunk * k, refill=args.refill, attention="pallas")
    extra["continuous_pallas"]["tokens_equal_static"] = same(kern)
    extra["continuous_pallas"]["max_abs_logprob_diff"] = float(
        np.abs(np.where(ref.mask, kern.logprobs - ref.logprobs, 0)).max())
  if args.paged:
    from poly_epo.engine.spec import plan_spec
    spec = plan_spec(settings.make(num_samples=k, cache="paged",
                                   max_new_tokens=args.new_tokens,
                                   page_size=args.page_size),
                     batch_dev=1, prompt_width=args.prompt_len)
    block, per_row = spec.page, spec.cache_len // spec.page
    pg, extra["continuous_paged"] = _run(
        args, policy, tokens, mask, engine="continuous",
        slots=args.paged_slots or 2 * args.chunk * k, refill=args.refill,
        attention=args.attention, cache="paged", page_size=block,
        pages=args.pages or args.chunk * k * per_row)
    extra["continuous_paged"]["tokens_equal_static"] = same(pg)
  runs = {"static_full": static_full, "static": static,
          "continuous": continuous, **extra}
  _roofline(cfg, args, runs, _fill_tokens(mask, ref.lengths))
  return {
      "device": jax.devices()[0].platform, "preset": args.preset,
      "params": cfg.num_params, "lengths": args.lengths,
      "prompts": args.prompts, "samples": k, "prompt_len": args.prompt_len,
      "new_tokens": args.new_tokens, "chunk_prompts": args.chunk,
      "attention": args.attention, **runs, "tokens_equal": same(cont),
      "speedup": continuous["useful_tokens_per_s"] /
                 static["useful_tokens_per_s"],
      "speedup_vs_full": continuous["useful_tokens_per_s"] /
                         static_full["useful_tokens_per_s"]}


def _roofline(cfg, args, runs: dict, fill_tokens: int):
  """On a card with measured HBM bandwidth: the bytes a decode step must
  read (every weight once, plus the KV of the filled slots of its busy rows,
  `fill_tokens` in all; `static_full` reads every slot of every row) against
  the measured time: roofline_fraction = bound / wall."""
  figures = card_figures()
  if not figures:
    return
  isz = np.dtype(args.dtype).itemsize
  kv_token = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * isz
  weights = cfg.num_params * isz
  for name, r in runs.items():
    kv = fill_tokens * kv_token
    if name == "static_full":
      kv = r["executed_row_steps"] * (args.prompt_len + args.new_tokens) * \
          kv_token
    r["roofline_s"] = (r["decode_steps"] * weights + kv) / \
        figures["hbm_bytes_s"]
    r["ms_per_step"] = 1e3 * r["wall_s"] / max(r["decode_steps"], 1)
    r["roofline_fraction"] = r["roofline_s"] / r["wall_s"]


def _fill_tokens(mask, lengths) -> int:
  """Filled slots summed over the useful decode row-steps: response token t
  (t >= 1; token 0 comes from the prefill) of a row with a p-token prompt
  attends to p + t slots."""
  p = np.asarray(mask).sum(-1)[:, None].astype(np.int64)  # [B, 1]
  n = np.asarray(lengths).astype(np.int64) - 1  # Decode steps per row.
  return int((n * p + n * (n + 1) // 2).sum())


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
  print(f"{'engine':<17} {'wall s':>8} {'useful tok/s':>13} "
        f"{'executed row-steps':>19} {'useful':>9} {'round trips':>12}")
  for name in ("static_full", "static", "continuous", "continuous_pallas",
               "continuous_paged"):
    if name not in res:
      continue
    r = res[name]
    roof = (f"  {r['ms_per_step']:.2f} ms/step, roofline "
            f"{100 * r['roofline_fraction']:.0f}%" if "roofline_s" in r
            else "")
    if "pages" in r:
      roof += (f"  {r['slots']} slots, pool {r['pages']} pages of "
               f"{r['page_size']} (peak {r['pages_peak']}), "
               f"{r['page_waits']} row-steps waited for a page, tokens "
               f"equal: {r['tokens_equal_static']}")
    print(f"{name:<17} {r['wall_s']:>8.2f} "
          f"{r['useful_tokens_per_s']:>13.0f} "
          f"{r['executed_row_steps']:>19d} {r['useful_row_steps']:>9d} "
          f"{r['host_round_trips']:>12d}{roof}")
  print(f"continuous / static: {res['speedup']:.2f}x useful tokens/s "
        f"({res['speedup_vs_full']:.2f}x vs static_full); tokens equal: "
        f"{res['tokens_equal']}")
  return 0
