"""LM judge run in-process on a local Hugging Face model through our sampler
(the paper's judge is a 4B instruct model). Greedy decoding; the tokenizer's
chat template is used when it has one. On a pod each process judges its own
prompts, so the judge lives on this host's devices (`mesh`: a mesh of
`jax.local_devices()`, FSDP-sharded there) in the run's compute dtype;
`poly_epo.plan` counts it."""

from __future__ import annotations

import jax

from poly_epo import sampling, storage
from poly_epo.judges.base import Judge
from poly_epo.judges.rubric import CUT_MARKER, build_prompt
from poly_epo.models import load_hf
from poly_epo.tokenizer import encode_prompts, load_tokenizer


class InProcessJudge(Judge):
  """Greedy decoding on a local model. The prompt budget is the model's
  `max_position_embeddings` minus `max_new_tokens`; `check_budget` fails at
  start-up when N responses of `max_response_tokens` cannot fit."""

  def __init__(self, path: str, *, max_new_tokens: int = 1024,
               dtype: str = "float32", max_response_tokens: int = 4096,
               mesh=None):
    super().__init__(max_response_tokens)
    path = storage.local_copy(path)
    self.model = load_hf(path, dtype=dtype, mesh=mesh)
    self.tokenizer = load_tokenizer(path)
    self.max_new_tokens = max_new_tokens
    self.max_prompt_tokens = (self.model.cfg.max_position_embeddings
                              - max_new_tokens)

  def check_budget(self, num_responses: int) -> None:
    """Raise (naming the config fields) when the rubric, a problem and
    `num_responses` responses of `max_response_tokens` cannot fit."""
    overhead = len(self.tokenizer(self._format(build_prompt(
        "", [""] * num_responses)))["input_ids"]) + 512  # + the problem.
    need = overhead + num_responses * self.max_response_tokens
    if need > self.max_prompt_tokens:
      raise ValueError(
          f"config.judge.max_response_tokens={self.max_response_tokens}: "
          f"{num_responses} responses need ~{need} prompt tokens, but the "
          f"judge model has {self.model.cfg.max_position_embeddings} "
          f"positions minus config.judge.max_reply_tokens="
          f"{self.max_new_tokens}; lower max_response_tokens to at most "
          f"{max((self.max_prompt_tokens - overhead) // num_responses, 0)}")

  def prepare(self, response: str) -> str:
    ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
    if len(ids) <= self.max_response_tokens:
      return response
    half = self.max_response_tokens // 2
    head = self.tokenizer.decode(ids[:half])
    tail = self.tokenizer.decode(ids[-half:])
    return head + CUT_MARKER.format(n=len(response) - len(head) - len(tail)) \
        + tail

  def _format(self, prompt_text: str) -> str:
    if getattr(self.tokenizer, "chat_template", None):
      return self.tokenizer.apply_chat_template(
          [{"role": "user", "content": prompt_text}], tokenize=False,
          add_generation_prompt=True)
    return prompt_text

  def complete(self, prompt_text: str) -> str:
    tokens, mask = encode_prompts(self.tokenizer, [self._format(prompt_text)],
                                  max_length=self.max_prompt_tokens,
                                  pad_to_multiple=64)
    out = sampling.generate(self.model, tokens, mask, num_samples=1,
                            max_new_tokens=self.max_new_tokens,
                            temperature=0.0,
                            eos_id=self.tokenizer.eos_token_id,
                            rng=jax.random.key(0),
                            pad_id=self.tokenizer.pad_token_id or 0)
    ids = out.tokens[0, 0][out.mask[0, 0]].tolist()
    return self.tokenizer.decode(ids, skip_special_tokens=True)
