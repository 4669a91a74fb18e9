"""poly_epo.storage: files on any etils.epath storage. The non-POSIX backend
is fsspec's in-memory filesystem registered as `gs://` (offline), through
which the project's own writers run: JSON, folder markers, metrics, the
judge cache and the Hugging Face export (then loaded back)."""

import ast
import os

import fsspec
import numpy as np
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from poly_epo import storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _MemoryGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")
  cachable = False


@pytest.fixture
def gcs(monkeypatch, tmp_path):
  """gs:// served from memory; a private local cache for copies."""
  for name in ("gs", "gcs"):
    fsspec.register_implementation(name, _MemoryGCS, clobber=True)
  MemoryFileSystem.store.clear()
  MemoryFileSystem.pseudo_dirs[:] = [""]
  monkeypatch.setenv("POLY_EPO_CACHE", str(tmp_path / "cache"))
  yield "gs://bucket/run"
  MemoryFileSystem.store.clear()


def test_paths_never_become_local_folders(gcs):
  assert storage.absolute(gcs) == gcs
  assert storage.join(gcs, "a", "b.json") == gcs + "/a/b.json"
  assert storage.absolute("rel").startswith("/")


def test_json_and_folder_markers_on_an_object_store(gcs):
  storage.makedirs(gcs)
  storage.write_json(storage.join(gcs, "x.json"), {"a": 1})
  assert storage.read_json(storage.join(gcs, "x.json")) == {"a": 1}
  assert not os.path.exists("gs:") and not os.path.exists("gs:/bucket")
  folder = storage.join(gcs, "policy")
  storage.begin_folder(folder)
  storage.write_text(storage.join(folder, "part"), "half")
  with pytest.raises(FileNotFoundError, match="incomplete"):
    storage.check_folder(folder, "policy", require_marker=False)
  storage.finish_folder(folder)
  storage.check_folder(folder, "policy", require_marker=True)
  storage.begin_folder(folder)  # A rewrite clears the old contents first.
  assert not storage.exists(storage.join(folder, "part"))
  with pytest.raises(FileNotFoundError, match="incomplete"):
    storage.check_folder(folder, "policy", require_marker=True)


def test_metrics_on_an_object_store_rewrite_whole_rows(gcs):
  from poly_epo.metrics_writer import MetricsWriter
  storage.makedirs(gcs)
  log = MetricsWriter(gcs, 0)
  log.write(0, {"loss": 1.0})
  log.write(1, {"loss": 0.5})
  log.close()
  again = MetricsWriter(gcs, 1)  # Resume at step 1: row 1 is dropped.
  again.write(1, {"loss": 0.25})
  rows = storage.read_text(storage.join(gcs, "metrics.jsonl")).splitlines()
  assert [eval(r.replace("true", "True"))["train/loss"] for r in rows] == [
      1.0, 0.25]


def test_judge_cache_is_shared_files_under_the_workdir(gcs):
  from poly_epo import judges
  cache = storage.join(gcs, "judge_cache")
  j = judges.HttpJudge("http://127.0.0.1:9/v1", "m", cache_dir=cache)
  j._cache["k1"] = "r1"
  j._pending.append({"key": "k1", "reply": "r1"})
  j.flush("step_0000000")
  j.flush("step_0000001")  # Nothing new: no file.
  assert [p.name for p in storage.Path(cache).iterdir()] == [
      "step_0000000.jsonl"]
  again = judges.HttpJudge("http://127.0.0.1:9/v1", "m", cache_dir=cache)
  assert again.complete.__self__._cache == {"k1": "r1"}


def test_hf_export_to_an_object_store_and_back(gcs):
  from poly_epo import checkpointing, export
  from poly_epo.models import init_model, preset
  from poly_epo.tokenizer import char_tokenizer
  model = init_model(preset("tiny", vocab_size=len(char_tokenizer())), seed=1)
  out = export.export_hf(model, char_tokenizer(), storage.join(gcs, "hf"))
  assert out == gcs + "/hf"
  assert storage.exists(storage.join(out, storage.COMPLETE))
  assert not storage.exists(storage.join(out, storage.INCOMPLETE))
  back, tok, _ = checkpointing.load_any(out)
  np.testing.assert_array_equal(np.asarray(back.embed[...]),
                                np.asarray(model.embed[...]))
  # A half-written export is refused, never loaded as if whole.
  storage.write_text(storage.join(out, storage.INCOMPLETE), "")
  with pytest.raises(FileNotFoundError, match="incomplete"):
    checkpointing.load_any(out)


def test_policy_folders_through_epath_objects(tmp_path):
  from poly_epo import checkpointing
  from poly_epo.models import init_model, preset
  from poly_epo.tokenizer import char_tokenizer
  model = init_model(preset("tiny", vocab_size=len(char_tokenizer())), seed=2)
  path = storage.Path(tmp_path) / "policy"
  saved = checkpointing.save_policy(path, model, char_tokenizer(), {"a": 1})
  back, _, meta = checkpointing.load_policy(storage.Path(saved))
  assert meta == {"a": 1}
  np.testing.assert_array_equal(np.asarray(back.embed[...]),
                                np.asarray(model.embed[...]))
  os.remove(os.path.join(saved, storage.COMPLETE))  # As if killed mid-save.
  with pytest.raises(FileNotFoundError, match="incomplete"):
    checkpointing.load_policy(saved)


def test_no_module_calls_os_path_abspath_on_a_workdir():
  """Only storage.absolute (which leaves URLs alone) and __file__ lookups."""
  offenders = []
  for folder, _, files in os.walk(os.path.join(ROOT, "poly_epo")):
    for name in files:
      if not name.endswith(".py") or name == "storage.py":
        continue
      path = os.path.join(folder, name)
      for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Call) and ast.unparse(node.func) in (
            "os.path.abspath", "os.path.realpath", "abspath"):
          if ast.unparse(node.args[0]) != "__file__":
            offenders.append(f"{path}:{node.lineno}")
  assert not offenders, offenders
