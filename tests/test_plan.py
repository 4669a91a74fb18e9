"""poly_epo.plan on a tiny config: exact byte counts, and a verdict that
changes with the chip."""

import json
import os
import subprocess
import sys

from poly_epo.models import preset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _plan(*args):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  res = subprocess.run(
      [sys.executable, "-m", "poly_epo.plan",
       f"--config={os.path.join(ROOT, 'configs', 'polynomial.py')}", "--json",
       *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  return json.loads(res.stdout)


def test_tiny_plan_counts_bytes_exactly():
  p = _plan("--config.model.dtype=bfloat16", "--config.max_new_tokens=16")
  n = preset("tiny").num_params
  per = p["per_device_bytes"]
  assert p["num_params"] == n
  assert per["params"] == 4 * n  # f32 master weights on one device.
  assert per["gradients"] == 4 * n
  assert per["sampler_params"] == 2 * n  # The bf16 copy.
  # AdamW: two f32 moments per parameter plus scalar counts.
  assert 8 * n <= per["optimizer"] <= 8 * n + 64
  cfg = preset("tiny")
  kv = (2 * cfg.num_layers * 32 * 8 * cfg.num_kv_heads * cfg.head_dim *
        (32 + 16) * 2 + 32 * 8 * (32 + 16))  # k and v (bf16) + the mask.
  assert per["kv_cache"] == kv
  assert per["update_temp"] > 0 and per["rollout_temp"] > 0
  assert p["fits"] is True
  assert p["max_chunk_prompts"] == 32 and p["min_num_microbatches"] == 1


def test_sharded_plan_divides_the_bytes():
  one = _plan("--config.mesh.data=1")
  four = _plan("--devices=4", "--config.mesh.data=1",
               "--config.mesh.fsdp=4")
  assert four["devices"] == 4 and four["mesh"]["fsdp"] == 4
  # The tiny model's matrices all divide by 4: a quarter per device, bar the
  # replicated norm scales.
  assert four["per_device_bytes"]["params"] < one["per_device_bytes"][
      "params"] / 3
