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
from test_trainer import _config, base  # noqa: F401  (fixture)

RUN = dict(steps=4, prompts_per_step=8, ckpt_every=2, keep_checkpoints=3,
           eval_every=0, eval_prompts=4, eval_samples=4, export_hf=False)


@pytest.fixture(scope="module")
def reference(base, tmp_path_factory):  # noqa: F811
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
    base, reference, tmp_path, damage, capsys):  # noqa: F811
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
    base, reference, tmp_path):  # noqa: F811
  work = str(tmp_path / "run")
  shutil.copytree(reference, work)
  for step in ("2", "4"):
    shutil.rmtree(os.path.join(work, "checkpoints", step, "state"))
  with pytest.raises(RuntimeError, match=r"no checkpoint under .*run/"
                     r"checkpoints restores \(step 4: .*; step 2: "):
    trainer.train(_config(workdir=work, base_policy=base, **RUN))
