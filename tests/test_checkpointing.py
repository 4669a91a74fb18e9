"""poly_epo.checkpointing: a damaged newest training checkpoint is reported,
set aside, and the run resumes from the next older one with the metrics of
an undamaged run; a run whose checkpoints are all damaged stops with one
line naming the workdir."""

import glob
import os
import shutil

import pytest

from poly_epo import trainer
from test_multihost import _same_rows
from test_trainer import _config

RUN = dict(steps=4, prompts_per_step=8, ckpt_every=2, keep_checkpoints=3,
           eval_every=0, eval_prompts=4, eval_samples=4, export_hf=False)


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):
  work = str(tmp_path_factory.mktemp("ckpt") / "ref")
  trainer.train(_config(workdir=work, base_policy=base, **RUN))
  return work


def _truncate_a_data_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"),
                    recursive=True)
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)


DAMAGE = {
    "truncated data file": _truncate_a_data_file,
    "missing state/": lambda d: shutil.rmtree(os.path.join(d, "state")),
    "missing _METADATA": lambda d: os.remove(os.path.join(d, "state",
                                                          "_METADATA")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_older_one(
    base, reference, tmp_path, damage, capsys):
  work = str(tmp_path / "run")
  shutil.copytree(reference, work)
  DAMAGE[damage](os.path.join(work, "checkpoints", "4"))
  capsys.readouterr()
  trainer.train(_config(workdir=work, base_policy=base, **RUN))
  said = capsys.readouterr().out
  assert "checkpoint step 4" in said and "could not be restored" in said
  assert "resumed from the older checkpoint, step 2" in said
  assert os.path.isdir(os.path.join(work, "checkpoints_damaged", "4"))
  _same_rows(reference, work)


def test_no_restorable_checkpoint_is_one_line_naming_the_workdir(
    base, reference, tmp_path):
  work = str(tmp_path / "run")
  shutil.copytree(reference, work)
  for step in ("2", "4"):
    shutil.rmtree(os.path.join(work, "checkpoints", step, "state"))
  with pytest.raises(RuntimeError, match=r"no checkpoint under .*run/"
                     r"checkpoints restores \(step 4: .*; step 2: "):
    trainer.train(_config(workdir=work, base_policy=base, **RUN))


def _tiny_policy(tmp_path, alphabet=None):
  from poly_epo.models import init_model, preset
  from poly_epo.tokenizer import char_tokenizer
  tok = char_tokenizer(alphabet) if alphabet else char_tokenizer()
  model = init_model(preset("tiny", vocab_size=len(tok)), seed=0)
  return model, tok


def test_a_swapped_tokenizer_is_refused_naming_the_policy(tmp_path):
  """A policy folder's tokenizer must be the one saved with its weights:
  another (smaller) one would turn prompts into unknown tokens."""
  from poly_epo import checkpointing
  from poly_epo.tokenizer import char_tokenizer
  model, tok = _tiny_policy(tmp_path)
  path = checkpointing.save_policy(str(tmp_path / "policy"), model, tok)
  checkpointing.load_policy(path)  # As saved: loads.
  shutil.rmtree(os.path.join(path, "tokenizer"))
  char_tokenizer("ab=").save_pretrained(os.path.join(path, "tokenizer"))
  with pytest.raises(ValueError, match=r"policy.*tokenizer has \d+ ids but "
                     r"the one saved with these weights had"):
    checkpointing.load_policy(path)


def test_hugging_face_tokenizer_beyond_the_embedding_is_refused(tmp_path):
  """Ids beyond the embedding would read garbage (NaN in training): a
  larger embedding is fine, a smaller one is refused at load."""
  from poly_epo import checkpointing
  from poly_epo.models import init_model, preset, save_hf
  from poly_epo.tokenizer import char_tokenizer
  tok = char_tokenizer()
  small = init_model(preset("tiny", vocab_size=len(tok) - 3), seed=0)
  save_hf(small, str(tmp_path / "small"), tokenizer=tok)
  with pytest.raises(ValueError, match=r"small: the tokenizer has \d+ ids "
                     r"but the model's embedding has \d+ rows"):
    checkpointing.load_any(str(tmp_path / "small"))
  padded = init_model(preset("tiny", vocab_size=len(tok) + 5), seed=0)
  save_hf(padded, str(tmp_path / "padded"), tokenizer=tok)
  checkpointing.load_any(str(tmp_path / "padded"))


def test_a_truncated_safetensors_file_is_one_line_naming_it(tmp_path):
  from poly_epo import checkpointing
  from poly_epo.models import save_hf
  model, tok = _tiny_policy(tmp_path)
  save_hf(model, str(tmp_path / "hf"), tokenizer=tok)
  (weights,) = glob.glob(str(tmp_path / "hf" / "*.safetensors"))
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) // 2)
  with pytest.raises(ValueError) as e:
    checkpointing.load_any(str(tmp_path / "hf"))
  assert str(e.value).startswith(f"{weights}: damaged safetensors file")
  assert "\n" not in str(e.value)


def _state(value):
  import jax.numpy as jnp
  return {"w": jnp.full((4,), value, jnp.float32)}, {"m": jnp.zeros(4)}


def test_non_finite_weights_are_never_checkpointed_or_resumed(tmp_path):
  """A non-finite state is refused at save; a non-finite checkpoint (an
  older version wrote one) is reported and the last finite one used."""
  import numpy as np
  import orbax.checkpoint as ocp
  from poly_epo import checkpointing
  ck = checkpointing.TrainCheckpoints(str(tmp_path), keep=3)
  ck.save(1, *_state(1.0))
  with pytest.raises(FloatingPointError, match="step 2: .*non-finite"):
    ck.save(2, *_state(np.inf))
  assert ck.latest_step() == 1
  params, opt = _state(np.nan)  # Written behind save's back.
  ck.manager.save(3, args=ocp.args.Composite(state=ocp.args.StandardSave(
      {"params": params, "opt_state": opt})))
  ck.manager.wait_until_finished()
  said = []
  step, p, _ = ck.restore_latest(*_state(0.0), log=said.append)
  assert step == 1 and float(p["w"][0]) == 1.0
  assert "non-finite" in said[0] and "step 3" in said[0]
  ck.close()


def test_a_failed_checkpoint_write_is_one_line_and_a_log(tmp_path,
                                                         monkeypatch):
  """Disk full during a save: one line naming the checkpoint folder and the
  cause; the traceback goes to <workdir>/errors.log."""
  import errno
  from poly_epo import checkpointing
  ck = checkpointing.TrainCheckpoints(str(tmp_path), keep=3)

  def full(*a, **k):
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as inner:
      raise ValueError("tensorstore write failed") from inner
  monkeypatch.setattr(ck.manager, "save", full)
  with pytest.raises(OSError) as e:
    ck.save(5, *_state(1.0))
  msg = str(e.value)
  assert "\n" not in msg and ck.dir in msg and "step 5" in msg
  assert "No space left on device" in msg
  assert "tensorstore write failed" in open(tmp_path / "errors.log").read()
