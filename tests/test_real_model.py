"""The paper's recipe config on CPU, end to end, with a real-model layout: a
tiny random Qwen3 saved as a Hugging Face folder whose tokenizer has a chat
template, a 6-problem verl-format Parquet file, and the LM judge over HTTP
(good replies, then an outage that stops the run loudly) or in-process."""

import json
import os
import subprocess
import sys

import pytest

from test_judges import _Handler, server  # noqa: F401  (fixture)
from test_math_task import _verl_rows
from test_trainer import ROOT

TEMPLATE = ("{% for m in messages %}<|user|>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<|assistant|>{% endif %}")


@pytest.fixture(scope="module")
def hf_policy(tmp_path_factory):
  import pyarrow as pa
  import pyarrow.parquet as pq
  from poly_epo.models import init_model, preset, save_hf
  from poly_epo.tokenizer import char_tokenizer
  d = tmp_path_factory.mktemp("real")
  tok = char_tokenizer()
  tok.chat_template = TEMPLATE
  model = init_model(preset("tiny", vocab_size=len(tok)), seed=0)
  save_hf(model, str(d / "qwen3-tiny"), tokenizer=tok)
  pq.write_table(pa.Table.from_pylist(_verl_rows(6)), str(d / "data.parquet"))
  return str(d / "qwen3-tiny"), str(d / "data.parquet")


def _cmd(workdir, hf, data, *extra):
  return [sys.executable, "-m", "poly_epo.train",
          f"--config={os.path.join(ROOT, 'configs', 'qwen3_4b_polaris.py')}",
          f"--config.base_policy={hf}", f"--config.task.options.path={data}",
          "--config.task.options.heldout_fraction=0.0",
          "--config.task.options.workers=1", f"--config.workdir={workdir}",
          "--config.mesh.fsdp=1", "--config.prompts_per_step=2",
          "--config.num_samples=4", "--config.set_size=2",
          "--config.num_minibatches=1",
          "--config.num_microbatches=1", "--config.max_prompt_tokens=160",
          "--config.max_new_tokens=16", "--config.model.dtype=bfloat16",
          "--config.model.attention_chunk=0", "--config.model.logprob_chunk=0",
          "--config.rollout.chunk_prompts=0", "--config.eval_every=0",
          "--config.ckpt_every=1", "--config.judge.max_response_tokens=64",
          "--config.judge.max_reply_tokens=32", "--config.progress=False",
          *extra]


def _run(cmd):
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                        timeout=600,
                        env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))


def _rows(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


def test_recipe_with_http_judge_runs_then_stops_on_an_outage(
    hf_policy, server, tmp_path):  # noqa: F811
  hf, data = hf_policy
  work = str(tmp_path / "http")
  # Health check + 3 steps x 2 prompts answered; then HTTP 500 for good.
  _Handler.script[:] = ["good"] * 7 + ["500"] * 400
  res = _run(_cmd(work, hf, data, f"--config.judge.url={server}",
                  "--config.judge.failure_window=2", "--config.steps=8"))
  assert res.returncode == 1, res.stderr[-3000:]
  last = res.stderr.strip().splitlines()[-1]
  assert last.startswith("error: the strategy judge failed") and \
      "resumes" in last
  rows = [r for r in _rows(work) if "train/loss" in r]
  assert [r["train/judge/failed_fraction"] for r in rows] == [0, 0, 0, 1, 1]
  # bf16 compute: old log-probs recomputed by the training model (verl).
  assert all("train/sampler_logp_abs_diff" in r for r in rows)
  assert os.path.isdir(os.path.join(work, "checkpoints", "4"))
  _Handler.script[:] = []


def test_recipe_with_in_process_judge(hf_policy, tmp_path):
  hf, data = hf_policy
  work = str(tmp_path / "inproc")
  res = _run(_cmd(work, hf, data, "--config.judge.kind=inprocess",
                  f"--config.judge.path={hf}", "--config.steps=2",
                  f"--config.task.options.eval_sets.aime25={data}",
                  "--config.eval_prompts=2", "--config.eval_samples=2"))
  assert res.returncode == 0, res.stderr[-3000:]
  rows = [r for r in _rows(work) if "train/loss" in r]
  assert len(rows) == 2 and "train/judge/failed_fraction" in rows[0]
  # The named validation set is evaluated on its own (final evaluation).
  assert any("eval/aime25/pass@1" in r and r["step"] == 2
             for r in _rows(work))
  base_eval = json.load(open(os.path.join(work, "base_eval.json")))
  assert list(base_eval) == ["aime25"]
  assert os.path.exists(os.path.join(work, "policy_hf", "config.json"))


def test_evaluate_a_hugging_face_folder_with_the_judge_on_a_named_set(
    hf_policy, server, tmp_path):  # noqa: F811
  hf, data = hf_policy
  _Handler.script[:] = []  # Every judge request answered (labels A, B, ...).
  out = str(tmp_path / "ev")
  res = subprocess.run(
      [sys.executable, "-m", "poly_epo.evaluate",
       f"--config={os.path.join(ROOT, 'configs', 'qwen3_4b_polaris.py')}",
       f"--policy={hf}", "--samples=4", f"--out={out}",
       f"--config.task.options.path={data}",
       "--config.task.options.workers=1",
       f"--config.task.options.eval_sets.aime25={data}",
       f"--config.judge.url={server}", "--config.max_prompt_tokens=160",
       f"--config.workdir={tmp_path / 'work'}",
       "--config.max_new_tokens=8", "--config.model.dtype=float32"],
      cwd=ROOT, capture_output=True, text=True, timeout=600,
      env=dict(os.environ, XLA_FLAGS="", JAX_PLATFORMS="cpu"))
  assert res.returncode == 0, res.stderr[-3000:]
  ev = json.load(open(os.path.join(out, "eval.json")))
  assert ev["set"] == "aime25" and ev["prompts"] == 6
  (report,) = ev["policies"].values()
  # The judge's labels (A, B alternating), not the task's (none for math).
  assert report["distinct_all"] == 2.0


def _first_layers(folder: str, out: str, layers: int) -> str:
  """The real checkpoint cut to its first `layers` blocks (its embedding,
  tokenizer and chat template as they are): the 30-layer update takes
  ~70-100 s to compile here, 2 layers a few."""
  import shutil
  from safetensors.numpy import load_file, save_file
  os.makedirs(out)
  for name in os.listdir(folder):
    if not name.endswith(".safetensors") and name != "config.json":
      shutil.copy(os.path.join(folder, name), out)
  cfg = json.load(open(os.path.join(folder, "config.json")))
  cfg["num_hidden_layers"] = layers
  json.dump(cfg, open(os.path.join(out, "config.json"), "w"))
  keep = lambda k: not k.startswith("model.layers.") or \
      int(k.split(".")[2]) < layers
  tensors = load_file(os.path.join(folder, "model.safetensors"))
  save_file({k: v for k, v in tensors.items() if keep(k)},
            os.path.join(out, "model.safetensors"))
  return out


def test_smollm2_trains_a_step_on_the_chat_task(smollm2, tmp_path):
  """The real model end to end, its first 2 of 30 layers (real embedding,
  tokenizer and chat template): its config as shipped (shrunk to two short
  steps), the chat task, the shared-prefix on-policy update."""
  work = str(tmp_path / "smol")
  policy = _first_layers(smollm2, str(tmp_path / "smol2"), 2)
  res = _run([sys.executable, "-m", "poly_epo.train",
              f"--config={os.path.join(ROOT, 'configs', 'smollm2_polynomial.py')}",
              f"--config.base_policy={policy}", f"--config.workdir={work}",
              "--config.steps=2", "--config.num_samples=4",
              "--config.set_size=2", "--config.max_new_tokens=8",
              "--config.eval_prompts=0", "--config.progress=False"])
  assert res.returncode == 0, res.stderr[-3000:]
  rows = [r for r in _rows(work) if "train/loss" in r]
  assert len(rows) == 2
  for r in rows:
    assert r["train/ratio_min"] == 1.0 == r["train/ratio_max"]  # On policy.
    assert r["train/sampler_logp_abs_diff"] < 1e-3  # f32 sampler agrees.
    assert r["train/time/step_s"] > 0 and r["train/num_tokens"] > 0
