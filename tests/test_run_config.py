"""poly_epo.run_config: a run's identity (config.json and the copy kept in
every checkpoint), compared on resolved paths; damaged JSON files named."""

import os

import pytest

from poly_epo import checkpointing, run_config, storage
from test_trainer import _config


def _checkpoint(cfg, step=2):
  """A checkpoint of `cfg`'s run (tiny state), its identity kept."""
  import jax.numpy as jnp
  ck = checkpointing.TrainCheckpoints(cfg.workdir, 2,
                                      identity=run_config.identity(cfg))
  ck.save(step, {"w": jnp.ones(3)}, {"m": jnp.zeros(3)})
  ck.close()


def _write_config(cfg):
  storage.write_json(os.path.join(cfg.workdir, "config.json"),
                     run_config.identity(cfg))


def test_a_lost_config_json_cannot_let_another_config_continue(tmp_path):
  """config.json deleted: another algorithm and lr are refused (the
  checkpoint's copy names the fields); the same config is accepted and
  told that config.json is rebuilt."""
  cfg = _config(workdir=str(tmp_path / "run"))
  os.makedirs(cfg.workdir)
  _write_config(cfg)
  _checkpoint(cfg)
  os.remove(os.path.join(cfg.workdir, "config.json"))
  other = _config(workdir=cfg.workdir, algorithm="grpo", lr=1e-3)
  with pytest.raises(ValueError, match=r"holds checkpoints of a different "
                     r"config \(the copy in .*checkpoints/2: fields differ: "
                     r"algorithm, lr"):
    run_config.check_workdir(other)
  said = []
  run_config.check_workdir(cfg, say=said.append)
  assert "config.json is missing: rebuilt from the copy in" in said[0]


def test_a_damaged_config_json_is_rebuilt_or_refused_naming_both(tmp_path):
  cfg = _config(workdir=str(tmp_path / "run"))
  os.makedirs(cfg.workdir)
  _checkpoint(cfg)
  path = os.path.join(cfg.workdir, "config.json")
  with open(path, "w") as f:
    f.write('{"algorithm": "polyepo", "l')  # Truncated.
  with pytest.raises(ValueError) as e:
    run_config.check_workdir(_config(workdir=cfg.workdir, lr=1e-3))
  assert "checkpoints/2" in str(e.value) and path in str(e.value)
  said = []
  run_config.check_workdir(cfg, say=said.append)
  assert said and f"{path} is not valid JSON" in said[0]


def test_a_relative_base_policy_is_the_same_run_from_another_folder(
    tmp_path, monkeypatch):
  policy = tmp_path / "policies" / "p"
  policy.mkdir(parents=True)
  monkeypatch.chdir(tmp_path / "policies")
  rel = _config(workdir=str(tmp_path / "run"), base_policy="p")
  os.makedirs(rel.workdir)
  _write_config(rel)
  monkeypatch.chdir(tmp_path)
  run_config.check_workdir(_config(workdir=rel.workdir,
                                   base_policy=str(policy)))
  with pytest.raises(ValueError, match="fields differ: base_policy"):
    run_config.check_workdir(_config(workdir=rel.workdir,
                                     base_policy=str(tmp_path / "other")))


def test_json_files_read_back_name_the_file_and_the_fix(tmp_path):
  bad = tmp_path / "base_eval.json"
  bad.write_text('{"heldout": {"pass@1"')
  with pytest.raises(ValueError, match=rf"{bad} is not valid JSON .*; "
                     "delete it"):
    storage.read_json(str(bad), "delete it")
  bad.write_text("[1, 2]")
  with pytest.raises(ValueError, match=rf"{bad} holds a JSON list, not an "
                     "object; restore it"):
    storage.read_json(str(bad), "restore it")
  assert storage.read_json(str(bad), kind=list) == [1, 2]


def test_a_failed_start_leaves_nothing_that_blocks_the_fix(tmp_path):
  """A base_policy that is no policy fails at load, before the run's
  identity is written: the corrected command is not refused."""
  from poly_epo import trainer
  empty = tmp_path / "not_a_policy"
  empty.mkdir()
  cfg = _config(workdir=str(tmp_path / "run"), base_policy=str(empty),
                steps=1, eval_prompts=0)
  with pytest.raises(FileNotFoundError, match="neither a policy folder"):
    trainer.train(cfg)
  assert not os.path.exists(os.path.join(cfg.workdir, "config.json"))
  run_config.check_workdir(_config(workdir=cfg.workdir,
                                   base_policy=str(tmp_path / "fixed")))
