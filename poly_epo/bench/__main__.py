"""`python -m poly_epo.bench <name> [flags]`; `--help` after a name lists flags."""

import sys


def main(argv=None):
  argv = list(sys.argv[1:] if argv is None else argv)
  names = ("sampler", "rollout", "advantages", "train", "trl")
  if not argv or argv[0] not in names:
    print(f"usage: python -m poly_epo.bench {{{','.join(names)}}} [flags]")
    return 2
  if argv[0] == "sampler":
    from poly_epo.bench import sampler as mod
  elif argv[0] == "rollout":
    from poly_epo.bench import rollout as mod
  elif argv[0] == "train":
    from poly_epo.bench import train as mod
  elif argv[0] == "trl":
    from poly_epo.bench import trl as mod
  else:
    from poly_epo.bench import advantages as mod
  return mod.main(argv[1:])


if __name__ == "__main__":
  sys.exit(main())
