"""Strategy labels: integers per response, one reserved value.

A leaf module (no imports) so tasks, judges, evaluation and the set-RL kernel
share the constant without depending on each other.
"""

# The label of a degenerate response (gibberish, guessing, code instead of
# maths, heavy repetition, unparseable): it never counts as a strategy.
DEGENERATE = -1
