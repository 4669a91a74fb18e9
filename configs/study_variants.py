"""Variants of the embedded experiments for the claim-by-claim investigation
in docs/RESULTS.md: `--config configs/study_variants.py:<task>,<variant>`.

Variants: `n16` (N=16 responses per prompt, n=4, 16 prompts per step: the
same 256 sequences), `multi_cluster` (Poly-EPO's d(S)=0 when a set holds one
strategy), `sym_clip` (the authors' symmetric 0.2/0.2 clip for Dr.GRPO and
GRPO), `long` (240 steps), `low_lr` (lr 1e-4), `high_lr` (lr 3e-4),
`skew` (a base pretrained on a skewed corpus, `task.options.corpus_skew=
1.5`: a dominant strategy and rare others, like a pretrained LM), `uniform`
(`corpus_skew=0`: the broad corpus), `base` (unchanged). Join variants with
`+` (`uniform+high_lr`). Each sets its value explicitly, so a variant
means the same whatever the task config's defaults.
"""

import importlib.util
import os

import ml_collections


def get_config(arg: str = "polynomial,base"):
  task, variant = arg.split(",")
  path = os.path.join(os.path.dirname(__file__), f"{task}.py")
  spec = importlib.util.spec_from_file_location(f"{task}_cfg", path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  c = mod.get_config()
  for one in variant.split("+"):
    _apply(c, one)
  c.workdir = f"runs/{task}_{variant}"
  return c


SKEW = 1.5  # The skewed setting of the study (docs/RESULTS.md).


def _apply(c, variant: str) -> None:
  if variant == "n16":
    c.num_samples, c.prompts_per_step = 16, 16
  elif variant == "multi_cluster":
    c.objective_options.require_multiple_clusters = True
  elif variant == "sym_clip":
    for alg in ("drgrpo", "grpo"):
      c.loss_overrides[alg] = ml_collections.ConfigDict({"eps_high": 0.2})
  elif variant == "long":
    c.steps = 240
  elif variant == "low_lr":
    c.lr = 1e-4
  elif variant == "high_lr":
    c.lr = 3e-4
  elif variant == "skew":
    c.task.options.corpus_skew = SKEW
  elif variant == "uniform":
    c.task.options.corpus_skew = 0.0
  elif variant != "base":
    raise ValueError(f"configs/study_variants.py: unknown variant "
                     f"{variant!r}")
