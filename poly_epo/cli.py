"""Command-line plumbing shared by the entry points: flags parsed with
one-line errors (a missing config file, a misspelt `--config.field`) instead
of absl's tracebacks."""

from __future__ import annotations

import difflib
import os
import sys

from absl import flags


def _fields(cfg, prefix=""):
  for k, v in cfg.items():
    yield prefix + k
    if hasattr(v, "items"):
      yield from _fields(v, prefix + k + ".")


def config_path(argv) -> str | None:
  """The value of --config (`--config=X` or `--config X`)."""
  for i, a in enumerate(argv):
    if a.startswith("--config="):
      return a.split("=", 1)[1]
    if a == "--config" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load(path: str):
  """The config file's get_config(), or None."""
  import importlib.util
  try:
    spec = importlib.util.spec_from_file_location("_cfg", path.split(":")[0])
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.get_config()
  except Exception:  # noqa: BLE001 - only used for suggestions.
    return None


def _one_line(argv, err: Exception) -> str:
  """What went wrong, naming the flag or field."""
  config = config_path(argv)
  text = str(err)
  if isinstance(err, (AttributeError, KeyError)) or "not found" in text:
    names = [a.split("=", 1)[0][len("--config."):] for a in argv
             if a.startswith("--config.")]
    cfg = _load(config) if config else None
    known = list(_fields(cfg)) if cfg is not None else []
    for name in names:
      if name not in known:
        close = difflib.get_close_matches(name, known, n=1) or \
            difflib.get_close_matches(name.split(".")[-1], known, n=1)
        hint = f" (did you mean --config.{close[0]}?)" if close else ""
        return f"--config.{name}: no such config field{hint}"
  first = text.strip().splitlines()[0] if text.strip() else \
      type(err).__name__
  return f"command line: {first}"


def parse_flags(argv):
  """absl's flag parser, with one-line errors (exit 1; the traceback with
  POLY_EPO_TRACEBACK=1)."""
  config = config_path(argv)
  if config is not None and not os.path.isfile(config.split(":")[0]):
    # config_flags would only fail later, on first access, with a traceback.
    print(f"error: --config={config}: no such config file", file=sys.stderr)
    sys.exit(1)
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # noqa: BLE001 - reported in one line.
    if os.environ.get("POLY_EPO_TRACEBACK"):
      raise
    print(f"error: {_one_line(argv[1:], e)}", file=sys.stderr)
    sys.exit(1)
