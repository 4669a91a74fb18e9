"""poly_epo.pretrain + checkpointing + evaluate on a tiny budget."""

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from poly_epo import checkpointing, pretrain


def _config(tmp_path, task="polynomial"):
  import importlib.util
  spec = importlib.util.spec_from_file_location(
      "cfg", f"configs/{task}.py")
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  cfg = mod.get_config()
  cfg.workdir = str(tmp_path / task)
  cfg.pretrain.steps = 30
  cfg.pretrain.batch_size = 32
  cfg.pretrain.eval_prompts = 8
  cfg.pretrain.eval_samples = 4
  return cfg


@pytest.mark.parametrize("task", ["polynomial", "multiplication"])
def test_pretrain_writes_a_loadable_deterministic_policy(tmp_path, task):
  cfg = _config(tmp_path, task)
  summary = pretrain.pretrain(cfg, progress=False)
  assert 0 <= summary["heldout_pass@1"] <= summary["heldout_pass@4"] <= 1
  model, tok, meta = checkpointing.load_policy(summary["path"])
  assert meta["steps"] == 30
  tokens = jnp.asarray([[tok.bos_token_id, 5, 6, 7]])
  # Same seed, same config -> the same weights (deterministic on CPU).
  cfg.workdir = str(tmp_path / "again")
  again = pretrain.pretrain(cfg, progress=False)
  model2, _, _ = checkpointing.load_policy(again["path"])
  np.testing.assert_array_equal(np.asarray(model(tokens)),
                                np.asarray(model2(tokens)))
  json.dumps(meta)  # Summary is plain JSON.
  # The base's own strategy distribution: a share per prompt in [1/m, 1]
  # (or 0 when nothing parses), and named pattern shares summing to 1 where
  # the task's labels are named (multiplication).
  top = summary["heldout_top_strategy_share"]
  assert top == 0 or 1 / 4 <= top <= 1
  shares = summary["heldout_strategy_shares"]
  if task == "multiplication":
    assert abs(sum(shares.values()) - 1) < 1e-9
    assert "first_add" in pretrain.strategy_line(summary)
  else:
    assert shares is None


def test_encode_corpus_masks_only_the_response():
  from poly_epo.tokenizer import char_tokenizer
  tok = char_tokenizer("ab=")
  tokens, loss_mask, attn = pretrain.encode_corpus(tok, [("ab=", "ba"),
                                                         ("a=", "b")])
  assert tokens.shape == (2, 6)
  assert loss_mask[0].tolist() == [False] * 3 + [True] * 3  # "ba" + EOS
  assert attn[1].tolist() == [True] * 4 + [False] * 2
  assert tokens[0, 5] == tok.eos_token_id


def test_missing_checkpoint_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="params"):
    checkpointing.load_policy(str(tmp_path))


class _StopAfter:
  """A stop request that arrives once `n` steps have been asked about."""

  def __init__(self, n):
    from poly_epo import distributed
    self._real = distributed.StopRequest()
    self.n, self.signum, self.name = n, 2, "SIGINT"

  @property
  def requested(self):
    self.n -= 1
    return self.n < 0

  def check(self, where):
    self._real.requested, self._real.signum = True, self.signum
    self._real.check(where)


def test_a_stop_while_pretraining_saves_and_the_rerun_resumes_exactly(
    tmp_path):
  from poly_epo import distributed
  cfg = _config(tmp_path)
  with pytest.raises(distributed.Stopped, match=r"stopped by SIGINT while "
                     r"pretraining the base policy, at step 12 of 30") as e:
    pretrain.pretrain(cfg, progress=False, stop=_StopAfter(12))
  assert e.value.exit_code == 130
  state = tmp_path / "polynomial" / "base_pretrain_state.npz"
  assert state.exists()
  resumed = pretrain.pretrain(cfg, progress=False)
  assert not state.exists()
  cfg.workdir = str(tmp_path / "straight")
  straight = pretrain.pretrain(cfg, progress=False)
  a, _, _ = checkpointing.load_policy(resumed["path"])
  b, _, _ = checkpointing.load_policy(straight["path"])
  tokens = jnp.asarray([[1, 5, 6, 7, 8]])
  np.testing.assert_array_equal(np.asarray(a(tokens)), np.asarray(b(tokens)))


def test_pretrain_command_takes_the_workdir_lock(tmp_path):
  """`python -m poly_epo.pretrain` into a live run's workdir is refused in
  one line: it would replace that run's base policy under it."""
  import subprocess
  import sys
  from poly_epo import distributed
  cfg = _config(tmp_path)
  os.makedirs(cfg.workdir)
  lock = distributed.WorkdirLock(cfg.workdir).acquire()
  try:
    res = subprocess.run(
        [sys.executable, "-m", "poly_epo.pretrain",
         "--config=configs/polynomial.py", f"--config.workdir={cfg.workdir}"],
        capture_output=True, text=True, timeout=300)
  finally:
    lock.release()
  assert res.returncode == 1, res.stderr[-2000:]
  assert res.stderr.strip().splitlines()[-1].startswith(
      f"error: workdir {cfg.workdir!r} is in use by another run")
