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

import dataclasses

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
    storage.finish_folder(path, {"kind": "policy"})
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
      storage.join(path, "model_config.json"))).replace(**config_overrides)
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
  meta_path = storage.join(path, "meta.json")
  meta = storage.read_json(meta_path) if storage.exists(meta_path) else {}
  return model, tokenizer, meta


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
    return model, load_tokenizer(path), {"source": path}
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


class TrainCheckpoints:
  """(params, opt_state) every `ckpt_every` steps under `<workdir>/checkpoints`
  (Orbax CheckpointManager: collective across processes, keeps the last
  `keep`)."""

  def __init__(self, workdir: str, keep: int):
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
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave({"params": params,
                                     "opt_state": opt_state})))
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()
