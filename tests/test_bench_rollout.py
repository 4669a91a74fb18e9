"""poly_epo.bench.rollout: `--json` prints one object with every engine's
useful tokens/s and row-step counts that add up, and the engines decode
the same forced-length sequences."""

import json
import subprocess
import sys

from test_trainer import ROOT


def test_json_object_and_counts():
  out = subprocess.run(
      [sys.executable, "-m", "poly_epo.bench", "rollout", "--preset",
       "bench-s", "--lengths", "uniform", "--prompts", "6", "--samples", "2",
       "--prompt-len", "8", "--new-tokens", "40", "--chunk", "2",
       "--repeats", "1", "--json"],
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
