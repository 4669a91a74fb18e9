"""poly_epo: set reinforcement learning and Poly-EPO for language models in JAX."""

__version__ = "0.1.0"
