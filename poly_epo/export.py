"""`python -m poly_epo.export --policy <policy dir> --out <hf dir> [--dtype bfloat16]`

Converts a saved policy (`checkpointing.save_policy` folder: the trainer's
`<workdir>/policy`, a pretrained base, ...) into a Hugging Face folder that
transformers, vLLM and SGLang load: `model.safetensors` (or shards with an
index), `config.json`, `generation_config.json` and the tokenizer. The folder
is written in place between an in-progress marker and a completion marker
(`storage.begin_folder` / `finish_folder`), so an interrupted export is
refused by `checkpointing.load_any`, on local disks and `gs://` alike. The
trainer writes `<workdir>/policy_hf/` this way at the end of a run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys

from poly_epo import distributed


def export_hf(model, tokenizer, out: str, *, dtype: str | None = None,
              max_shard_bytes: int | None = 5 * 2**30) -> str:
  """Write `model` (+ tokenizer) as a Hugging Face folder at `out`.

  Collective on several processes (parameters are gathered); only the main
  process writes. Returns the absolute path.
  """
  from poly_epo import storage
  from poly_epo.models import save_hf
  out = storage.absolute(out)
  main = distributed.is_main()
  if main:
    storage.begin_folder(out)
  # Every process gathers the parameters; only the main one writes.
  with storage.staged(out) if main else contextlib.nullcontext(out) as stage:
    save_hf(model, stage, dtype=dtype, max_shard_bytes=max_shard_bytes,
            tokenizer=tokenizer)
  if main:
    storage.finish_folder(out, {"kind": "huggingface",
                                "dtype": dtype or model.cfg.param_dtype})
  distributed.barrier("export_hf")
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m poly_epo.export",
                               description=__doc__.split("\n\n")[1])
  ap.add_argument("--policy", required=True, help="saved policy folder")
  ap.add_argument("--out", required=True, help="Hugging Face folder to write")
  ap.add_argument("--dtype", default=None,
                  choices=["float32", "bfloat16", "float16"],
                  help="tensor dtype in the files (default: the params')")
  ap.add_argument("--max-shard-gb", type=float, default=5.0,
                  help="split the weights into files of at most this size")
  args = ap.parse_args(argv)
  from poly_epo import checkpointing
  try:
    model, tok, _ = checkpointing.load_policy(args.policy)
  except FileNotFoundError as e:
    print(f"error: --policy: {e}", file=sys.stderr)
    return 2
  out = export_hf(model, tok, args.out, dtype=args.dtype,
                  max_shard_bytes=int(args.max_shard_gb * 2**30))
  print(f"wrote {out} ({model.cfg.num_params / 1e6:.2f}M params, "
        f"{args.dtype or model.cfg.param_dtype})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
