"""Files on any storage every host sees: local or shared disks and object
stores (`gs://` and the other `etils.epath` schemes, Orbax's own path
library).

Every file the project writes itself goes through here, so a `gs://`
workdir, base policy, data file or export works like a local folder:

- paths stay strings; a URL is never passed to `os.path` (`absolute`);
- `write_text` / `write_json` are atomic (a local temporary file renamed;
  an object store's single-object write is atomic already);
- folders that must be whole (policies, Hugging Face exports) are written in
  place with `begin_folder` / `finish_folder`: an in-progress marker first,
  a completion marker last (no directory renames, which object stores and
  gcsfuse do not make atomic); `check_folder` refuses a folder whose write
  was cut short;
- `local_copy` fetches a remote file or folder into a local cache for the
  libraries that only read local paths (tokenizers, safetensors, Parquet);
  `upload` copies a local folder up.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile

from etils import epath

COMPLETE = "poly_epo_complete.json"  # Written last: the folder is whole.
INCOMPLETE = ".poly_epo_incomplete"  # Written first, removed last.


def is_url(path) -> bool:
  return "://" in str(path)


def absolute(path) -> str:
  """An absolute local path, or the URL unchanged."""
  path = str(path)
  return path if is_url(path) else os.path.abspath(path)


def join(base, *parts) -> str:
  return str(epath.Path(base).joinpath(*parts)) if is_url(base) else \
      os.path.join(str(base), *parts)


def Path(path) -> epath.Path:  # noqa: N802 - a constructor, like epath's.
  return epath.Path(path)


def exists(path) -> bool:
  return epath.Path(path).exists()


def isdir(path) -> bool:
  return epath.Path(path).is_dir()


def isfile(path) -> bool:
  return epath.Path(path).is_file()


def makedirs(path) -> None:
  epath.Path(path).mkdir(parents=True, exist_ok=True)


def remove(path) -> None:
  p = epath.Path(path)
  if p.is_dir():
    p.rmtree()
  elif p.exists():
    p.unlink()


def read_text(path) -> str:
  return epath.Path(path).read_text()


def read_json(path, fix: str = "", kind: type | None = dict):
  """The JSON file at `path`; a file that is not JSON (truncated, edited)
  or not of `kind` is a ValueError naming it and what to do (`fix`)."""
  fix = fix or "delete it or restore it from a backup"
  try:
    obj = json.loads(read_text(path))
  except json.JSONDecodeError as e:
    raise ValueError(f"{path} is not valid JSON ({e.msg}, line {e.lineno}); "
                     f"{fix}") from None
  except UnicodeDecodeError:
    raise ValueError(f"{path} is not a text file; {fix}") from None
  if kind is not None and not isinstance(obj, kind):
    want = {dict: "an object", list: "an array"}.get(kind, kind.__name__)
    raise ValueError(f"{path} holds a JSON {type(obj).__name__}, not {want};"
                     f" {fix}")
  return obj


def read_bytes(path) -> bytes:
  return epath.Path(path).read_bytes()


def write_bytes(path, data: bytes) -> None:
  """Atomic: readers see the old file or the new one, never a part."""
  if is_url(path):
    epath.Path(path).write_bytes(data)
    return
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def write_text(path, text: str) -> None:
  """Atomic (UTF-8), like `write_bytes`."""
  write_bytes(path, text.encode("utf-8"))


def write_json(path, obj) -> None:
  write_text(path, json.dumps(obj, indent=2, sort_keys=True))


def append_line(path, obj) -> None:
  """One JSON line added to a log (object stores: the file rewritten)."""
  line = json.dumps(obj, sort_keys=True) + "\n"
  if is_url(path):
    old = read_text(path) if exists(path) else ""
    write_text(path, old + line)
    return
  with open(path, "a") as f:
    f.write(line)


def begin_folder(path) -> None:
  """Start (re)writing a whole folder in place: mark it incomplete, then
  clear what an earlier write left."""
  p = epath.Path(path)
  p.mkdir(parents=True, exist_ok=True)
  (p / INCOMPLETE).write_text("")
  for child in p.iterdir():
    if child.name != INCOMPLETE:
      remove(child)


def finish_folder(path, info: dict | None = None) -> None:
  """The completion marker (written last), then the in-progress one goes."""
  write_json(join(path, COMPLETE), info or {})
  remove(join(path, INCOMPLETE))


def check_folder(path, what: str, require_marker: bool) -> None:
  """Refuse a folder whose write was cut short (FileNotFoundError naming
  it). `require_marker`: our own formats, which always carry the marker."""
  if exists(join(path, INCOMPLETE)) or (
      require_marker and not exists(join(path, COMPLETE))):
    raise FileNotFoundError(
        f"{what} {str(path)!r} is incomplete: the write that made it was "
        f"interrupted (no {COMPLETE}); write it again")


def cache_root() -> str:
  """This machine's cache folder ($POLY_EPO_CACHE, else ~/.cache/poly_epo)."""
  return os.environ.get("POLY_EPO_CACHE",
                        os.path.expanduser("~/.cache/poly_epo"))


def local_copy(path) -> str:
  """A local path holding `path`'s contents: `path` itself when local, else
  a copy under ~/.cache/poly_epo/remote (reused when complete)."""
  path = str(path)
  if not is_url(path):
    return path
  name = epath.Path(path).name or "root"
  key = hashlib.sha256(path.encode()).hexdigest()[:16]
  dest = os.path.join(cache_root(), "remote", key, name)
  done = dest + ".fetched"
  if os.path.exists(done):
    return dest
  shutil.rmtree(dest, ignore_errors=True)
  _copy_tree(epath.Path(path), epath.Path(dest))
  with open(done, "w"):
    pass
  return dest


def upload(local_dir, dest) -> None:
  """Copy a local folder's files into `dest` (any storage)."""
  _copy_tree(epath.Path(local_dir), epath.Path(dest))


def _copy_tree(src: epath.Path, dst: epath.Path) -> None:
  if src.is_dir():
    dst.mkdir(parents=True, exist_ok=True)
    for child in src.iterdir():
      _copy_tree(child, dst / child.name)
  else:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_bytes(src.read_bytes())


@contextlib.contextmanager
def staged(dest):
  """A local folder for a writer that needs local paths (safetensors,
  tokenizers, matplotlib) to fill with `dest`'s files: `dest` itself when
  local, else a temporary folder uploaded to `dest` on exit, then removed."""
  if not is_url(dest):
    yield str(dest)
    return
  stage = tempfile.mkdtemp(prefix="poly_epo_")
  try:
    yield stage
    upload(stage, dest)
  finally:
    shutil.rmtree(stage, ignore_errors=True)
