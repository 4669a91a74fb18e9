"""poly_epo.bench.rollout: `--json` prints one object with every engine's
useful tokens/s and row-step counts that add up, and the engines decode
the same forced-length sequences."""

import argparse
import json
import subprocess
import sys

import numpy as np

from test_trainer import ROOT


def test_json_object_and_counts():
  out = subprocess.run(
      [sys.executable, "-m", "poly_epo.bench", "rollout", "--preset",
       "bench-s", "--lengths", "uniform", "--prompts", "6", "--samples", "2",
       "--prompt-len", "8", "--new-tokens", "40", "--chunk", "2",
       "--repeats", "1", "--paged", "--page-size", "8", "--json"],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
      env={"JAX_PLATFORMS": "cpu", "PATH": "/usr/bin:/bin"})
  res = json.loads(out.stdout.strip().splitlines()[-1])
  assert res["tokens_equal"] is True
  for name in ("static_full", "static", "continuous"):
    r = res[name]
    assert r["useful_tokens_per_s"] > 0
    # Every response token but the first (the prefill's) is a busy row-step.
    assert r["useful_row_steps"] == r["useful_tokens"] - 6 * 2
    assert r["executed_row_steps"] >= r["useful_row_steps"]
  # Forced lengths spread over [L/20, L]: static waits for each chunk's
  # longest row; continuous refills, so it executes fewer row-steps.
  assert res["continuous"]["executed_row_steps"] < \
      res["static"]["executed_row_steps"]
  # The paged cache: twice the slots in the contiguous cache's memory (2
  # prompts x 2 samples x 6 pages of 8), the same tokens.
  paged = res["continuous_paged"]
  assert paged["tokens_equal_static"] is True
  assert paged["slots"] == 8 and paged["pages"] == 24
  assert 0 < paged["pages_peak"] <= 24
  assert paged["useful_row_steps"] == paged["useful_tokens"] - 6 * 2


def test_fill_tokens_counts_each_decode_steps_filled_slots():
  """Against a step-by-step count: the step making response token t of a
  row with a p-token prompt attends to p + t slots (t >= 1)."""
  from poly_epo.bench import rollout as bench
  rs = np.random.RandomState(0)
  mask = rs.rand(5, 9) < 0.6
  lengths = rs.randint(1, 30, (5, 3))
  want = sum(mask[b].sum() + t for b in range(5) for j in range(3)
             for t in range(1, lengths[b, j]))
  assert bench._fill_tokens(mask, lengths) == want


def test_roofline_bytes(monkeypatch):
  from poly_epo.bench import rollout as bench
  from poly_epo.models import preset
  monkeypatch.setattr(bench, "card_figures", lambda: {"hbm_bytes_s": 1e9})
  cfg = preset("bench-s")
  args = argparse.Namespace(dtype="float32", prompt_len=4, new_tokens=6)
  runs = {"static": {"decode_steps": 10, "wall_s": 2.0},
          "static_full": {"decode_steps": 10, "wall_s": 2.0,
                          "executed_row_steps": 30}}
  bench._roofline(cfg, args, runs, fill_tokens=100)
  kv = 2 * cfg.num_layers * cfg.num_kv_heads * cfg.head_dim * 4
  assert runs["static"]["roofline_s"] == (10 * cfg.num_params * 4 +
                                          100 * kv) / 1e9
  assert runs["static_full"]["roofline_s"] == (10 * cfg.num_params * 4 +
                                               300 * kv) / 1e9
  assert runs["static"]["ms_per_step"] == 200.0
