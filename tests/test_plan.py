"""poly_epo.plan on a tiny config: exact byte counts, and a verdict that
changes with the chip."""

import json
import os
import subprocess
import sys

import pytest

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


TINY = ("--config.model.dtype=bfloat16", "--config.max_new_tokens=16")


@pytest.fixture(scope="module")
def tiny_plan():
  return _plan(*TINY)


def test_tiny_plan_counts_bytes_exactly(tiny_plan):
  p = tiny_plan
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
        (32 + 16) * 2)  # k and v (bf16): 32 prompts x 8 rows x 48 slots.
  assert per["kv_cache"] == kv
  assert per["update_temp"] > 0 and per["rollout_temp"] > 0
  assert p["fits"] is True
  assert p["max_chunk_prompts"] == 32 and p["min_num_microbatches"] == 1


def test_sharded_plan_divides_the_bytes(tiny_plan):
  one = tiny_plan  # One device.
  four = _plan(*TINY, "--devices=4", "--config.mesh.data=1",
               "--config.mesh.fsdp=4")
  assert four["devices"] == 4 and four["mesh"]["fsdp"] == 4
  # The tiny model's matrices all divide by 4: a quarter per device, bar the
  # replicated norm scales.
  assert four["per_device_bytes"]["params"] < one["per_device_bytes"][
      "params"] / 3


def _tpu_plan(*args):
  pytest.importorskip("libtpu", reason="the tpu extra (libtpu) is needed")
  return _plan(*args)


def test_tpu_compiler_plan_reports_exact_bytes_and_times():
  """The tiny config's rollout and update compiled by the TPU compiler for a
  v5e slice of 8 chips (deviceless), data-parallel: every chip holds the
  whole model, so its bytes are exact."""
  p = _tpu_plan("--chip=v5e", "--devices=8", "--config.mesh.data=0",
                "--config.model.dtype=bfloat16")
  n = preset("tiny").num_params
  assert p["compiler"] == "tpu" and "TPU v5 lite x 8" in p["compiler_note"]
  assert p["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert p["num_params"] == n
  assert p["per_device_bytes"]["params"] == 4 * n
  assert p["per_device_bytes"]["sampler_params"] == 2 * n
  for name in ("decode_step", "prefill_chunk", "update_microbatch"):
    assert p["cost"][name]["flops"] > 0, name
    assert p["estimated_seconds"][name] > 0, name
  e = p["estimated_seconds"]
  assert e["rl_step"] == pytest.approx(e["rollout"] + e["update"])
  assert p["fits"] is True


def test_without_libtpu_tpu_chips_fall_back_to_xla_cpu_and_say_so():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  env["PYTHONPATH"] = os.path.join(ROOT, "tests")
  code = ("import sys; from poly_epo import tpu_topology as t; "
          "t.libtpu_available = lambda: False; from poly_epo import plan; "
          "from absl import app; sys.argv = ['plan', '--config=" +
          os.path.join(ROOT, "configs", "polynomial.py") +
          "', '--chip=v5p', '--json']; app.run(plan.main)")
  res = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  p = json.loads(res.stdout)
  assert p["compiler"] == "xla-cpu" and "tpu extra" in p["compiler_note"]


def test_a_device_count_the_batch_cannot_use_is_one_line():
  """--devices 3: the step's 256 rows do not split 3 ways; the config check
  says so (exit 2), not JAX's sharding error."""
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  res = subprocess.run(
      [sys.executable, "-m", "poly_epo.plan",
       f"--config={os.path.join(ROOT, 'configs', 'polynomial.py')}",
       "--devices=3"], env=env, cwd=ROOT, capture_output=True, text=True,
      timeout=300)
  assert res.returncode == 2
  assert res.stderr.strip().splitlines() == [
      "error: config.mesh: a step's 256 rows (prompts_per_step x "
      "num_samples) do not split over 3 batch shards (3 devices / "
      "mesh.tensor=1); use a device count that divides them"]


def test_an_in_process_judge_is_counted_per_host_device(tmp_path):
  import importlib.util
  from hf_fixtures import tiny_hf_config
  from poly_epo import plan as plan_mod
  cfg_hf = tiny_hf_config("qwen3")
  cfg_hf.save_pretrained(str(tmp_path))  # config.json is all it reads.
  spec = importlib.util.spec_from_file_location(
      "polycfg", os.path.join(ROOT, "configs", "polynomial.py"))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  cfg.model.dtype = "bfloat16"
  cfg.judge.kind, cfg.judge.path = "inprocess", str(tmp_path)

  class Dev:  # Two hosts of four devices.
    def __init__(self, p):
      self.process_index = p
  devices = [Dev(p) for p in (0, 0, 0, 0, 1, 1, 1, 1)]
  from poly_epo.models import ModelConfig
  n = ModelConfig.from_hf_json(str(tmp_path)).num_params
  assert plan_mod.judge_bytes(cfg, devices) == int(n * 2 / 4)
  cfg.judge.kind = "http"
  assert plan_mod.judge_bytes(cfg, devices) == 0
