"""`python -m poly_epo.plot <workdir> [<workdir> ...] [--out curves.png]`

Overlays several runs' training curves (reward, pass@1, distinct correct,
entropy) and held-out pass@k over steps, from their `metrics.jsonl`, in one
PNG (default: `curves.png` in the first workdir).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(prog="python -m poly_epo.plot",
                               description=__doc__.split("\n\n")[1])
  ap.add_argument("workdirs", nargs="+", help="run folders (metrics.jsonl)")
  ap.add_argument("--out", default="", help="PNG to write")
  args = ap.parse_args(argv)
  from poly_epo import plots
  out = args.out or os.path.join(args.workdirs[0], "curves.png")
  try:
    path = plots.plot_runs(args.workdirs, out)
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"wrote {path}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
