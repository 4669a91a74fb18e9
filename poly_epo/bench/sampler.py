"""Sampler throughput: prefill and decode tokens/s and compile time.

  python -m poly_epo.bench sampler --preset bench-s --batch 32 --samples 8 \
      --prompt-len 16 --new-tokens 32 [--torch]

Sampling runs at temperature 1 with EOS disabled, so every run decodes all
`new_tokens` steps. Throughput is end-to-end generated tokens (B*k*L) over the
median wall time of prefill + decode; prefill is also reported on its own
(B*P unique prompt tokens: each prompt is prefilled once for its k samples).
With `--torch`, transformers' PyTorch `generate` (KV cache) runs the same
workload on a model with the same weights, for comparison.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from poly_epo import sampling
from poly_epo.bench.device import (card, card_figures, peak_memory_bytes,
                                   timed)
from poly_epo.models import init_model, preset


def _parse(argv):
  ap = argparse.ArgumentParser(prog="python -m poly_epo.bench sampler")
  ap.add_argument("--preset", default="bench-s",
                  help="model preset (bench-s, bench-m, tiny, small)")
  ap.add_argument("--policy", default="",
                  help="a real model instead of --preset: a Hugging Face or "
                  "policy folder, a .gguf file or pkg:<package>/<file>")
  ap.add_argument("--batch", type=int, default=32, help="prompts B")
  ap.add_argument("--samples", type=int, default=8, help="samples per prompt k")
  ap.add_argument("--prompt-len", type=int, default=16)
  ap.add_argument("--new-tokens", type=int, default=32)
  ap.add_argument("--repeats", type=int, default=7)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--torch", action="store_true",
                  help="also time transformers' PyTorch generate")
  return ap.parse_args(argv)


def _time(fn, repeats):
  return timed(fn, repeats)[1]  # (Warm already: its first call is spare.)


def run_jax(args):
  if args.policy:
    from poly_epo import checkpointing
    from poly_epo.convert import policy_path
    model, _, _ = checkpointing.load_any(policy_path(args.policy),
                                         param_dtype=args.dtype,
                                         dtype=args.dtype)
    cfg = model.cfg
  else:
    cfg = preset(args.preset, param_dtype=args.dtype, dtype=args.dtype)
    model = init_model(cfg, seed=0)
  b, k, p, l = args.batch, args.samples, args.prompt_len, args.new_tokens
  rng = np.random.RandomState(0)
  prompts = jnp.asarray(rng.randint(0, cfg.vocab_size, (b, p)), jnp.int32)
  mask = jnp.ones((b, p), bool)
  def prefill():  # The prefill and the first token.
    out = sampling.generate(model, prompts, mask, num_samples=k,
                            max_new_tokens=1, eos_id=None,
                            rng=jax.random.key(1))
    return jax.block_until_ready(out.tokens)

  def full():
    out = sampling.generate(model, prompts, mask, num_samples=k,
                            max_new_tokens=l, eos_id=None,
                            rng=jax.random.key(1))
    return jax.block_until_ready(out.tokens)

  t0 = time.perf_counter()
  full()
  first = time.perf_counter() - t0
  t_full = _time(full, args.repeats)
  t_prefill = _time(prefill, args.repeats)
  t_decode = max(t_full - t_prefill, 1e-9)
  return dict(params=cfg.num_params, compile_s=first - t_full,
              prefill_tok_s=b * p / t_prefill,
              decode_tok_s=b * k * (l - 1) / t_decode,
              e2e_tok_s=b * k * l / t_full, wall_s=t_full), model


def run_torch(args, model):
  import torch
  import transformers
  from poly_epo.models import save_hf
  torch.set_num_threads(max(1, torch.get_num_threads()))
  b, k, p, l = args.batch, args.samples, args.prompt_len, args.new_tokens
  gpu = jax.devices()[0].platform == "gpu" and torch.cuda.is_available()
  device = "cuda" if gpu else "cpu"
  dtype = torch.bfloat16 if args.dtype == "bfloat16" else torch.float32
  with tempfile.TemporaryDirectory() as d:
    save_hf(model, d)
    tm = transformers.AutoModelForCausalLM.from_pretrained(d).to(
        device=device, dtype=dtype).eval()
  rng = np.random.RandomState(0)
  prompts = torch.tensor(rng.randint(0, model.cfg.vocab_size, (b, p)))
  prompts = prompts.repeat_interleave(k, 0).to(device)

  def gen():
    with torch.no_grad():
      tm.generate(prompts, attention_mask=torch.ones_like(prompts),
                  do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                  max_new_tokens=l, min_new_tokens=l, eos_token_id=None,
                  pad_token_id=0, use_cache=True)
    if gpu:
      torch.cuda.synchronize()
  gen()
  t = _time(gen, args.repeats)
  return dict(e2e_tok_s=b * k * l / t, wall_s=t)


def decode_roofline_s(cfg, rows: int, prompt_len: int, new_tokens: int,
                      hbm_bytes_s: float) -> float:
  """Seconds per decode step if it only read, at the card's bandwidth, the
  weights (compute dtype) and the KV cache of the valid positions (mean over
  the steps: P + L/2)."""
  item = np.dtype(jnp.dtype(cfg.dtype)).itemsize
  weights = cfg.num_params * item
  kv = (rows * cfg.num_layers * 2 * cfg.num_kv_heads * cfg.head_dim *
        (prompt_len + new_tokens / 2) * item)
  return (weights + kv) / hbm_bytes_s


def main(argv=None):
  args = _parse(argv)
  res, model = run_jax(args)
  print(f"device={jax.devices()[0].platform} "
        f"{'policy=' + args.policy if args.policy else 'preset=' + args.preset} "
        f"params={res['params'] / 1e6:.2f}M dtype={args.dtype} "
        f"B={args.batch} k={args.samples} P={args.prompt_len} "
        f"L={args.new_tokens} repeats={args.repeats} (medians)")
  print(f"poly_epo   generate: {res['e2e_tok_s']:10.0f} tok/s end-to-end "
        f"({res['wall_s'] * 1e3:.1f} ms) | prefill {res['prefill_tok_s']:.0f}"
        f" prompt tok/s | decode {res['decode_tok_s']:.0f} tok/s | compile "
        f"{res['compile_s']:.2f} s")
  bw = card_figures().get("hbm_bytes_s")
  if bw:
    step = args.batch * args.samples / res["decode_tok_s"]
    roof = decode_roofline_s(model.cfg, args.batch * args.samples,
                             args.prompt_len, args.new_tokens, bw)
    print(f"decode step {step * 1e3:.2f} ms vs memory roofline "
          f"{roof * 1e3:.2f} ms at {bw / 1e12:.1f} TB/s ({card()}): "
          f"{step / roof:.2f}x the roofline")
  mem = peak_memory_bytes()
  if mem is not None:
    print(f"peak device memory: {mem / 2**30:.2f} GiB")
  if args.torch:
    tres = run_torch(args, model)
    print(f"transformers generate: {tres['e2e_tok_s']:10.0f} tok/s end-to-end"
          f" ({tres['wall_s'] * 1e3:.1f} ms) -> poly_epo is "
          f"{res['e2e_tok_s'] / tres['e2e_tok_s']:.2f}x")
  return 0
