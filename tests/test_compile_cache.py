"""poly_epo.compile_cache: where the persistent cache goes, and that a
compiled program lands there (a subprocess: the setting is process-wide)."""

import os
import subprocess
import sys

from poly_epo import compile_cache


def test_cache_dir_choices(tmp_path, monkeypatch):
  monkeypatch.setenv("POLY_EPO_CACHE", str(tmp_path))
  assert compile_cache.cache_dir("", "runs/x") is None
  assert compile_cache.cache_dir("auto", "runs/x") == str(tmp_path /
                                                          "jax_cache")
  assert compile_cache.cache_dir("auto", "gs://b/run") == \
      "gs://b/run/jax_cache"
  assert compile_cache.cache_dir("gs://b/cc", "runs/x") == "gs://b/cc"
  assert compile_cache.cache_dir("rel", "w") == os.path.abspath("rel")


def test_programs_are_written_to_the_cache(tmp_path):
  code = (
      "import jax, jax.numpy as jnp\n"
      "from poly_epo import compile_cache\n"
      f"compile_cache.enable({str(tmp_path)!r}, 'w')\n"
      "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
      "print(jax.jit(lambda x: jnp.sin(x) @ x)(jnp.ones((8, 8))).sum())\n")
  res = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert res.returncode == 0, res.stderr[-2000:]
  assert os.listdir(tmp_path)


def test_a_cache_folder_that_cannot_be_made_is_a_warning(tmp_path):
  """The cache is optional: a folder under a regular file is one warning
  naming the config field, and no cache (the run goes on)."""
  blocker = tmp_path / "file"
  blocker.write_text("x")
  said = []
  got = compile_cache.enable(str(blocker / "cache"), "w", say=said.append)
  assert got is None
  assert len(said) == 1 and "config.compilation_cache_dir" in said[0]
  assert str(blocker / "cache") in said[0]
