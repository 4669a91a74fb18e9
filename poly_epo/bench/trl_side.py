"""TRL's side of `python -m poly_epo.bench trl`: GRPO steps of TRL's
`GRPOTrainer` on a run config's model, prompts and settings, timed per step
(one process; prints one JSON line per step). Kept apart from the poly_epo
side so neither library's threads, caches or compiles touch the other's
timings. Needs `pip install -e '.[trl]'` (PyTorch and TRL)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m poly_epo.bench.trl_side")
  ap.add_argument("--policy", required=True, help="Hugging Face folder")
  ap.add_argument("--task", required=True, help="task name")
  ap.add_argument("--task-options", default="{}", help="JSON")
  ap.add_argument("--prompts", type=int, required=True)
  ap.add_argument("--samples", type=int, required=True)
  ap.add_argument("--new-tokens", type=int, required=True)
  ap.add_argument("--steps", type=int, required=True)
  ap.add_argument("--lr", type=float, required=True)
  ap.add_argument("--eps-low", type=float, required=True)
  ap.add_argument("--eps-high", type=float, required=True)
  ap.add_argument("--grad-clip", type=float, required=True)
  ap.add_argument("--weight-decay", type=float, required=True)
  ap.add_argument("--temperature", type=float, required=True)
  ap.add_argument("--seed", type=int, default=0)
  ap.add_argument("--tf32", action="store_true",
                  help="float32 matmuls in TensorFloat-32 on a GPU")
  ap.add_argument("--micro", type=int, default=1,
                  help="gradient-accumulation micro-batches of the one "
                  "optimizer step (TRL's memory: ~7 GB per 16 sequences)")
  a = ap.parse_args(argv)
  import torch
  from datasets import Dataset
  from transformers import (AutoModelForCausalLM, AutoTokenizer,
                            TrainerCallback)
  from trl import GRPOConfig, GRPOTrainer

  from poly_epo import tasks
  task = tasks.get(a.task, **json.loads(a.task_options))
  prompts = [p for s in range(a.steps)
             for p in task.train_batch(a.seed, s, a.prompts)]
  data = Dataset.from_list([{"prompt": [{"role": "user", "content": p}],
                             "text": p} for p in prompts])

  def reward(prompts, completions, text, **_):
    return [task.reward(t, c[0]["content"] if isinstance(c, list) else c)
            for t, c in zip(text, completions)]

  torch.manual_seed(a.seed)
  gpu = torch.cuda.is_available()
  if a.tf32:
    torch.set_float32_matmul_precision("high")
  model = AutoModelForCausalLM.from_pretrained(a.policy, dtype=torch.float32)
  tok = AutoTokenizer.from_pretrained(a.policy)
  out = tempfile.mkdtemp(prefix="trl_bench_")
  cfg = GRPOConfig(
      output_dir=out,
      per_device_train_batch_size=a.prompts * a.samples // a.micro,
      gradient_accumulation_steps=a.micro, num_generations=a.samples, max_completion_length=a.new_tokens,
      learning_rate=a.lr, lr_scheduler_type="constant", beta=0.0,
      num_iterations=1, loss_type="dr_grpo", scale_rewards="none",
      epsilon=a.eps_low, epsilon_high=a.eps_high, max_grad_norm=a.grad_clip,
      weight_decay=a.weight_decay, temperature=a.temperature, top_p=1.0,
      max_steps=a.steps, logging_steps=1, use_cpu=not gpu, bf16=False,
      fp16=False, report_to=[], save_strategy="no", seed=a.seed,
      gradient_checkpointing=False, shuffle_dataset=False,
      disable_tqdm=True, dataloader_num_workers=0)
  trainer = GRPOTrainer(model=model, reward_funcs=reward, args=cfg,
                        train_dataset=data, processing_class=tok)
  marks = {}
  generate = trainer._generate_and_score_completions

  def timed_generate(*args, **kw):
    t0 = time.perf_counter()
    result = generate(*args, **kw)
    marks["rollout_s"] = time.perf_counter() - t0
    return result
  trainer._generate_and_score_completions = timed_generate

  class Clock(TrainerCallback):
    def on_step_begin(self, args, state, control, **kw):
      marks["t0"] = time.perf_counter()

    def on_step_end(self, args, state, control, **kw):
      step_s = time.perf_counter() - marks["t0"]
      print(json.dumps({"library": "trl", "step": state.global_step,
                        "step_s": step_s, "rollout_s": marks.get("rollout_s"),
                        "update_s": step_s - marks.get("rollout_s", 0.0)}),
            flush=True)

  trainer.add_callback(Clock())
  trainer.train()
  return 0


if __name__ == "__main__":
  sys.exit(main())
