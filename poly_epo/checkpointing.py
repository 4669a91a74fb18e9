"""Policy folders and training checkpoints.

A policy folder `path/` holds `params/` (Orbax), `model_config.json`,
`tokenizer/` (`save_pretrained`), `meta.json` (free-form: task, steps,
metrics) and, written last, the completion marker (`storage.COMPLETE`): a
killed save leaves a folder that `load_policy` refuses, never one that looks
whole. No directory renames, so it works the same on local disks, gcsfuse
and `gs://` (any `etils.epath` path). On several processes the Orbax write
is collective and the main process writes the rest.

`load_policy(path, mesh=...)` restores every parameter directly with its
`NamedSharding` and target dtype: no whole-model copy on one device.

`TrainCheckpoints` wraps Orbax's `CheckpointManager` for the trainer's
(params, optimizer state) at each saved step.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time

import jax
import orbax.checkpoint as ocp
from flax import nnx

from poly_epo import distributed, sharding, storage
from poly_epo.models.config import ModelConfig
from poly_epo.models.transformer import Transformer
from poly_epo.tokenizer import load_tokenizer


def config_to_dict(cfg: ModelConfig) -> dict:
  return dataclasses.asdict(cfg)


def config_from_dict(d: dict) -> ModelConfig:
  d = dict(d)
  if d.get("rope_scaling") is not None:
    d["rope_scaling"] = tuple(d["rope_scaling"])
  return ModelConfig(**d)


def save_policy(path: str, model: Transformer, tokenizer, meta: dict | None
                = None) -> str:
  """Write a policy folder (collective on several processes); returns its
  absolute path (or URL)."""
  path = storage.absolute(path)
  if distributed.is_main():
    storage.begin_folder(path)
  distributed.barrier("save_policy:start")
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(storage.join(path, "params"), nnx.state(model, nnx.Param),
               force=True)
  distributed.barrier("save_policy:params")
  if distributed.is_main():
    storage.write_json(storage.join(path, "model_config.json"),
                       config_to_dict(model.cfg))
    with storage.staged(storage.join(path, "tokenizer")) as tok_dir:
      tokenizer.save_pretrained(tok_dir)
    storage.write_json(storage.join(path, "meta.json"), meta or {})
    storage.finish_folder(path, {"kind": "policy",
                                 "tokenizer_ids": tokenizer_ids(tokenizer)})
  distributed.barrier("save_policy:done")
  return path


def is_policy_dir(path: str) -> bool:
  return storage.isfile(storage.join(path, "model_config.json"))


def abstract_model(cfg: ModelConfig):
  """(graphdef, abstract params, rest) of a model with this config."""
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  return nnx.split(abstract, nnx.Param, ...)


def load_policy(path: str, mesh=None, **config_overrides):
  """(model, tokenizer, meta) from a folder written by `save_policy`.

  Args:
    path: the policy folder.
    mesh: restore every parameter sharded over it (`sharding.py` rules);
      None restores onto this process's first device, whatever topology
      saved it (a policy pretrained on CPU loads on a GPU).
    **config_overrides: `ModelConfig` fields to change, e.g. param_dtype
      (parameters are restored in it), dtype, remat, attention.
  """
  for name in ("params", "model_config.json", "tokenizer"):
    if not storage.exists(storage.join(path, name)):
      raise FileNotFoundError(f"policy checkpoint {path!r} has no {name}")
  storage.check_folder(path, "policy checkpoint", require_marker=True)
  cfg = config_from_dict(storage.read_json(
      storage.join(path, "model_config.json"),
      f"the policy folder {path} is damaged: save or export it again"
  )).replace(**config_overrides)
  graphdef, abstract_params, rest = abstract_model(cfg)
  if mesh is None:
    shardings = jax.tree.map(
        lambda _: jax.sharding.SingleDeviceSharding(jax.local_devices()[0]),
        abstract_params)
  else:
    shardings = sharding.tree_shardings(abstract_params, mesh)
  abstract_params = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      abstract_params, shardings)
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(storage.join(storage.absolute(path), "params"),
                           abstract_params)
  model = nnx.merge(graphdef, params, rest)
  tokenizer = load_tokenizer(storage.local_copy(storage.join(path,
                                                             "tokenizer")))
  marker = storage.read_json(storage.join(path, storage.COMPLETE),
                             "save the policy again")
  check_vocab(tokenizer, cfg.vocab_size, path,
              saved_ids=marker.get("tokenizer_ids"))
  meta_path = storage.join(path, "meta.json")
  meta = storage.read_json(meta_path, "delete it (it only describes the "
                           "policy)") if storage.exists(meta_path) else {}
  return model, tokenizer, meta


def tokenizer_ids(tok) -> int:
  """How many ids the tokenizer can produce (its largest id + 1)."""
  return max(tok.get_vocab().values(), default=-1) + 1


def check_vocab(tok, vocab_size: int, path: str,
                saved_ids: int | None = None) -> None:
  """The tokenizer's ids must fit the embedding (an embedding may be larger,
  padded for speed, never smaller: out-of-range ids read garbage), and a
  policy folder's tokenizer must be the one saved with its weights
  (`saved_ids`, recorded at save; a swapped tokenizer maps prompts to
  unknown tokens)."""
  ids = tokenizer_ids(tok)
  if ids > vocab_size:
    raise ValueError(
        f"{path}: the tokenizer has {ids} ids but the model's embedding has "
        f"{vocab_size} rows (ids beyond it have no embedding): the "
        "tokenizer and the weights come from different models")
  if saved_ids is not None and ids != saved_ids:
    raise ValueError(
        f"{path}: the tokenizer has {ids} ids but the one saved with these "
        f"weights had {saved_ids}: the tokenizer folder was replaced; "
        "restore it or save the policy again")


def load_any(path: str, mesh=None, **config_overrides):
  """(model, tokenizer, meta) from a policy folder or a Hugging Face folder
  (config.json + safetensors + tokenizer files)."""
  if is_policy_dir(path):
    return load_policy(path, mesh, **config_overrides)
  if storage.isfile(storage.join(path, "config.json")):
    from poly_epo.models.hf_io import load_hf
    storage.check_folder(path, "Hugging Face folder", require_marker=False)
    path = storage.local_copy(path)
    overrides = dict(config_overrides)
    overrides.setdefault("param_dtype", "float32")
    model = load_hf(path, overrides.pop("dtype", overrides["param_dtype"]),
                    mesh=mesh, **overrides)
    tok = load_tokenizer(path)
    check_vocab(tok, model.cfg.vocab_size, path)
    return model, tok, {"source": path}
  raise FileNotFoundError(
      f"{path!r} is neither a policy folder (model_config.json + params/) "
      "nor a Hugging Face folder (config.json + *.safetensors)")


def _first_line(e: Exception, where: str) -> str:
  """An Orbax / TensorStore error as one line naming the file (the one in
  the message when there is one, else the checkpoint's folder `where`)."""
  import re
  text = str(e).strip() or type(e).__name__
  head = re.split(r"\s*See full TensorStore details|\s*<bound method",
                  text.splitlines()[0])[0][:200]
  path = re.search(r"(/[^\s'\"<>]+)", text)
  return f"{type(e).__name__}: {head} [file {path.group(1) if path else where}]"


def _append_log(log_path: str, text: str) -> str | None:
  """`text` appended to a local log (a `gs://` workdir's goes to this
  machine's cache folder: appends need a local file); the file written, or
  None when it could not be (a full disk)."""
  if storage.is_url(log_path):
    log_path = os.path.join(storage.cache_root(), "errors.log")
  try:
    with open(log_path, "a") as f:
      f.write(text + "\n")
  except OSError:
    return None
  return log_path


def storage_error(e: BaseException, what: str, log_path: str) -> str:
  """One line for a failed write: what failed, the root cause (disk full,
  permission: the innermost exception) and where the whole traceback went
  (appended to `log_path`)."""
  import traceback
  root = e
  while root.__cause__ is not None or root.__context__ is not None:
    root = root.__cause__ or root.__context__
  detail = "".join(traceback.format_exception(e))
  written = _append_log(
      log_path, f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {what}\n{detail}")
  where = f"traceback in {written}" if written else \
      "no room for the traceback either"
  why = (str(root).splitlines() or [type(root).__name__])[0][:300]
  return f"{what}: {type(root).__name__}: {why} ({where})"


@contextlib.contextmanager
def _orbax_errors_to(log_path: str):
  """Orbax's own ERROR logs (a traceback per failed write thread, hundreds
  of lines on a full disk) go to `log_path` instead of the console while a
  checkpoint is written; the caller reports the failure in one line."""
  records = []

  class Keep(logging.Handler):
    def emit(self, record):
      records.append(self.format(record))
  absl_log = logging.getLogger("absl")
  keep = Keep()
  keep.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
  old = absl_log.propagate
  absl_log.propagate = False
  absl_log.addHandler(keep)
  try:
    yield
  finally:
    absl_log.removeHandler(keep)
    absl_log.propagate = old
    if records:
      _append_log(log_path, "\n".join(records))


def _finite(params, opt_state) -> bool:
  from poly_epo.update import all_finite
  return bool(jax.jit(all_finite)((params, opt_state)))


def saved_identity(workdir: str):
  """(step, run config) from the newest finished checkpoint under
  `<workdir>/checkpoints` that records one; (step, None) when the newest
  checkpoints record none (written before identities were kept); None when
  there are no checkpoints. Plain file reads: no collective."""
  root = storage.join(storage.absolute(workdir), "checkpoints")
  if not storage.isdir(root):
    return None
  steps = sorted((int(p.name) for p in storage.Path(root).iterdir()
                  if p.name.isdigit()), reverse=True)
  newest = None
  for step in steps:
    meta = storage.join(root, str(step), "_CHECKPOINT_METADATA")
    if not storage.exists(meta):
      continue  # Unfinished or damaged: not a checkpoint that restores.
    newest = step if newest is None else newest
    try:
      saved = (storage.read_json(meta).get("custom_metadata") or {}).get(
          "run_config")
    except ValueError:
      continue
    if saved:
      return step, saved
  return None if newest is None else (newest, None)


class TrainCheckpoints:
  """(params, opt_state) every `ckpt_every` steps under `<workdir>/checkpoints`
  (Orbax CheckpointManager: collective across processes, keeps the last
  `keep`)."""

  def __init__(self, workdir: str, keep: int, identity: dict | None = None):
    """`identity`: the run's config (`run_config.identity`), kept in every
    checkpoint's metadata so the run's identity survives a lost
    config.json (`saved_identity`)."""
    self.identity = identity
    self.dir = storage.join(storage.absolute(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.dir, options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                                       create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore_latest(self, params, opt_state, log=print):
    """(step, params, opt_state) from the newest checkpoint that restores;
    a damaged one is reported (step and file), moved aside to
    `<workdir>/checkpoints_damaged/<step>` (so nothing is lost and later
    saves can reuse its number) and the next older one is tried. (0, params,
    opt_state) when there is none; RuntimeError naming the workdir when
    none restores."""
    failed: dict[int, str] = {}  # step -> why it did not restore
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        params2, opt2 = self.restore(step, params, opt_state)
        if not _finite(params2, opt2):
          raise FloatingPointError("it holds non-finite values (inf/nan)")
      except Exception as e:  # noqa: BLE001 - reported, then the next one.
        failed[step] = _first_line(e, storage.join(self.dir, str(step)))
        log(f"checkpoint step {step} in {self.dir} could not be restored "
            f"({failed[step]}); trying an older one")
        continue
      if failed:
        self._set_aside(failed)
        log(f"resumed from the older checkpoint, step {step}")
      return step, params2, opt2
    if failed:
      why = "; ".join(f"step {s}: {m}" for s, m in failed.items())
      raise RuntimeError(f"no checkpoint under {self.dir} restores ({why}); "
                         "move the checkpoints folder away to start over")
    return 0, params, opt_state

  def _set_aside(self, steps) -> None:
    if distributed.is_main():
      aside = self.dir + "_damaged"
      storage.makedirs(aside)
      for step in steps:
        src = storage.Path(storage.join(self.dir, str(step)))
        if src.exists():
          dst = storage.Path(storage.join(aside, str(step)))
          if dst.exists():
            storage.remove(dst)
          src.rename(dst)
    distributed.barrier("checkpoints:set_aside")
    self.manager.reload()

  def restore(self, step: int, params, opt_state):
    """Restore onto the shardings and dtypes of the given (live) trees."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore({"params": params,
                                        "opt_state": opt_state})))
    return restored.state["params"], restored.state["opt_state"]

  def save(self, step: int, params, opt_state) -> None:
    """A checkpoint with non-finite values is never written
    (FloatingPointError naming the step)."""
    if not _finite(params, opt_state):
      raise FloatingPointError(
          f"step {step}: the parameters or optimizer state hold non-finite "
          f"values; not checkpointed ({self.dir} keeps the last finite one)")
    log_path = storage.join(os.path.dirname(self.dir), "errors.log")
    try:
      with _orbax_errors_to(log_path):
        self._save(step, params, opt_state)
    except Exception as e:  # noqa: BLE001 - one line; the rest to a log.
      raise OSError(storage_error(
          e, f"the checkpoint of step {step} was not written to {self.dir} "
          "(the earlier ones are kept)", log_path)) from None

  def _save(self, step: int, params, opt_state) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params,
                                     "opt_state": opt_state})),
        custom_metadata={"run_config": self.identity}
        if self.identity else None)
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
