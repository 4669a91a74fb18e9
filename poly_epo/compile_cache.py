"""JAX's persistent compilation cache, so a restarted run (or every host of
a pod after a pre-emption) loads its compiled programs instead of compiling
them again: minutes for a 4B model's update.

`config.compilation_cache_dir`: "auto" (default) = `<workdir>/jax_cache`
when the workdir is remote (`gs://`: shared by every host), else
`~/.cache/poly_epo/jax_cache` (shared by every run on this machine);
"" = off; any other value is the folder (local or `gs://`).
"""

from __future__ import annotations

import os

import jax

from poly_epo import storage


def cache_dir(setting: str, workdir: str) -> str | None:
  if not setting:
    return None
  if setting != "auto":
    return storage.absolute(os.path.expanduser(setting))
  if storage.is_url(workdir):
    return storage.join(workdir, "jax_cache")
  return os.path.join(storage.cache_root(), "jax_cache")


def enable(setting: str, workdir: str, say=print) -> str | None:
  """Point JAX at the cache folder (programs that took over a second to
  compile are kept); returns it, or None when off. The cache is optional:
  a folder that cannot be made (under a file, a read-only HOME) is one
  warning naming `config.compilation_cache_dir`, and the run goes on
  without it."""
  path = cache_dir(setting, workdir)
  if path is None:
    return None
  if not storage.is_url(path):
    try:
      os.makedirs(path, exist_ok=True)
      if not os.access(path, os.W_OK):
        raise PermissionError(f"{path} is not writable")
    except OSError as e:
      say(f"warning: no compilation cache: config.compilation_cache_dir="
          f"{setting!r} -> {path}: {e.strerror or e}; going on without it "
          "(set it to a writable folder, or '' to turn it off)")
      return None
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path
