"""LM judge run in-process on a local Hugging Face model through our sampler
(the paper's judge is a 4B instruct model). Greedy decoding; the tokenizer's
chat template is used when it has one."""

from __future__ import annotations

import jax

from poly_epo import sampling
from poly_epo.judges.base import Judge
from poly_epo.models import load_hf
from poly_epo.tokenizer import encode_prompts, load_tokenizer


class InProcessJudge(Judge):

  def __init__(self, path: str, *, max_new_tokens: int = 256,
               dtype: str = "float32", max_prompt_tokens: int = 8192):
    super().__init__()
    self.model = load_hf(path, dtype=dtype)
    self.tokenizer = load_tokenizer(path)
    self.max_new_tokens = max_new_tokens
    self.max_prompt_tokens = max_prompt_tokens

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
