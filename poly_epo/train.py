"""`python -m poly_epo.train --config configs/<exp>.py [--config.field=value]`.

The RL trainer is not built yet (see the open trainer issue). Until then the
entry point runs the demo of configs/demo.py: sampling and set advantages on a
random-init policy, end to end through the same jitted pieces the trainer
will use.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file (configs/*.py).", lock_config=True)


def toy_reward(text: str) -> float:
  """Share of digits in a completion (a stand-in until tasks land)."""
  return sum(ch.isdigit() for ch in text) / max(len(text), 1)


def toy_label(text: str) -> int:
  """Strategy label = first character class (digit/letter/other/empty)."""
  from poly_epo.set_rl import DEGENERATE
  if not text.strip():
    return DEGENERATE
  ch = text.strip()[0]
  return 0 if ch.isdigit() else 1 if ch.isalpha() else 2


def run_demo(cfg) -> dict:
  import jax
  import numpy as np

  from poly_epo import sampling, set_rl
  from poly_epo.models import init_model, preset
  from poly_epo.tokenizer import (char_tokenizer, decode_completions,
                                  encode_prompts)

  tok = char_tokenizer()
  model = init_model(preset(cfg.model, vocab_size=len(tok)), seed=cfg.seed)
  rs = np.random.RandomState(cfg.seed)
  prompts = [f"y={rs.randint(1, 9)}x^2{rs.choice(['+', '-'])}"
             f"{rs.randint(1, 20)}, x in [{-rs.randint(1, 9)},"
             f"{rs.randint(1, 9)}] ->" for _ in range(cfg.num_prompts)]
  tokens, mask = encode_prompts(tok, prompts)
  t0 = time.perf_counter()
  out = sampling.generate(
      model, tokens, mask, num_samples=cfg.num_samples,
      max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
      top_p=cfg.top_p, top_k=cfg.top_k, eos_id=tok.eos_token_id,
      rng=jax.random.key(cfg.seed), pad_id=tok.pad_token_id)
  jax.block_until_ready(out.tokens)
  seconds = time.perf_counter() - t0
  texts = decode_completions(tok, out.tokens, out.mask)
  rewards = np.array([[toy_reward(t) for t in row] for row in texts],
                     np.float32)
  labels = np.array([[toy_label(t) for t in row] for row in texts], np.int32)
  adv = np.asarray(set_rl.advantages(cfg.algorithm, rewards, labels,
                                     set_size=cfg.set_size))
  dr = np.asarray(set_rl.advantages("drgrpo", rewards, labels))
  os.makedirs(cfg.workdir, exist_ok=True)
  path = os.path.join(cfg.workdir, "samples.jsonl")
  with open(path + ".tmp", "w") as f:
    for b, p in enumerate(prompts):
      for j, text in enumerate(texts[b]):
        f.write(json.dumps({"prompt": p, "completion": text,
                            "reward": float(rewards[b, j]),
                            "label": int(labels[b, j]),
                            cfg.algorithm: float(adv[b, j]),
                            "drgrpo": float(dr[b, j])}) + "\n")
  os.replace(path + ".tmp", path)
  n_tok = int(np.asarray(out.lengths).sum())
  print(f"sampled {cfg.num_prompts} prompts x {cfg.num_samples} in "
        f"{seconds:.2f} s (incl. compile), {n_tok} tokens")
  print(f"prompt: {prompts[0]!r}")
  print(f"{'completion':<28} {'reward':>6} {'label':>5} "
        f"{cfg.algorithm:>9} {'drgrpo':>8}")
  for j, text in enumerate(texts[0]):
    print(f"{text[:26]!r:<28} {rewards[0, j]:>6.2f} {labels[0, j]:>5d} "
          f"{adv[0, j]:>9.4f} {dr[0, j]:>8.4f}")
  print(f"wrote {path}")
  return {"path": path, "seconds": seconds}


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax is chatty at INFO.
  cfg = _CONFIG.value
  if cfg is None:
    raise app.UsageError("--config=configs/<exp>.py is required")
  if cfg.get("mode", "demo") != "demo":
    raise app.UsageError(f"config.mode={cfg.mode!r}: only 'demo' exists until "
                         "the trainer lands")
  run_demo(cfg)


if __name__ == "__main__":
  sys.exit(app.run(main))
