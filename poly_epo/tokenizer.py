"""Tokenisers: a character-level one for embedded tasks, HF loading, left padding.

The character tokenizer is a `tokenizers` WordLevel model over single
characters, wrapped as a `PreTrainedTokenizerFast`, so it saves and loads with
`save_pretrained` / `AutoTokenizer.from_pretrained` beside a checkpoint like
any real tokenizer. Ids 0..3 are <pad>, <bos>, <eos>, <unk>.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import tokenizers
import transformers
from tokenizers import decoders, models, pre_tokenizers

SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
# Printable ASCII: enough for every embedded task's prompts and answers.
DEFAULT_ALPHABET = "".join(chr(c) for c in range(32, 127))


def char_tokenizer(alphabet: str = DEFAULT_ALPHABET
                   ) -> transformers.PreTrainedTokenizerFast:
  """A character-level tokenizer over `alphabet` (duplicates dropped)."""
  chars = list(dict.fromkeys(alphabet))
  vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
  for c in chars:
    if c in vocab:
      continue
    vocab[c] = len(vocab)
  tok = tokenizers.Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.Split(
      tokenizers.Regex("."), behavior="isolated")
  tok.decoder = decoders.Fuse()
  wrapped = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
      eos_token="<eos>", unk_token="<unk>", padding_side="left",
      clean_up_tokenization_spaces=False)
  return wrapped


def load_tokenizer(path: str) -> transformers.PreTrainedTokenizerBase:
  """Load a tokenizer saved in a local folder (never touches the network).

  Sets left padding, and uses EOS as the pad token when none is defined.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer folder {path!r} does not exist")
  try:
    tok = transformers.AutoTokenizer.from_pretrained(path,
                                                     local_files_only=True)
  except Exception as e:  # noqa: BLE001 - re-raised with the path named.
    raise ValueError(f"could not load a tokenizer from {path}: {e}") from e
  tok.padding_side = "left"
  if tok.pad_token is None:
    if tok.eos_token is None:
      raise ValueError(f"tokenizer at {path} has neither pad nor eos token")
    tok.pad_token = tok.eos_token
  return tok


def chat_format(tokenizer, text: str) -> str:
  """`text` as one user turn of the tokenizer's chat template, ending with
  the assistant's generation prompt (the authors' policy prompt); the text
  itself when the tokenizer has no template."""
  if not getattr(tokenizer, "chat_template", None):
    return text
  return tokenizer.apply_chat_template([{"role": "user", "content": text}],
                                       tokenize=False,
                                       add_generation_prompt=True)


def encode_prompts(tokenizer, prompts: Sequence[str], *,
                   max_length: int | None = None, add_bos: bool = False,
                   pad_to_multiple: int = 1, width: int | None = None,
                   chat: bool = False):
  """Left-pad a batch of prompts.

  Returns (tokens int32 [B, P], mask bool [B, P]). P is the longest prompt,
  rounded up to `pad_to_multiple` (fewer distinct shapes -> fewer compiles),
  or exactly `width` when given (which also bounds the prompt length).
  A prompt longer than `max_length` raises an error naming its index.
  With `chat`, each prompt is first formatted by `chat_format`.
  """
  ids = []
  for i, p in enumerate(prompts):
    if chat:
      p = chat_format(tokenizer, p)
    row = tokenizer.encode(p, add_special_tokens=False)
    if add_bos and tokenizer.bos_token_id is not None:
      row = [tokenizer.bos_token_id] + row
    limit = max_length if width is None else width
    if limit is not None and len(row) > limit:
      raise ValueError(f"prompt {i} has {len(row)} tokens, more than "
                       f"{'max_length' if width is None else 'width'}="
                       f"{limit}: {p[:80]!r}")
    ids.append(row)
  if width is None:
    width = max([len(r) for r in ids] + [1])
    width = -(-width // pad_to_multiple) * pad_to_multiple
  pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
  tokens = np.full((len(ids), width), pad, np.int32)
  mask = np.zeros((len(ids), width), bool)
  for i, row in enumerate(ids):
    if row:
      tokens[i, width - len(row):] = row
      mask[i, width - len(row):] = True
  return tokens, mask


def decode_completions(tokenizer, tokens, mask) -> list:
  """Decode [..., L] completions (valid tokens only, EOS and specials dropped).

  Returns nested lists matching the leading shape of `tokens`.
  """
  tokens, mask = np.asarray(tokens), np.asarray(mask).astype(bool)
  lead = tokens.shape[:-1]
  flat_t = tokens.reshape(-1, tokens.shape[-1])
  flat_m = mask.reshape(-1, tokens.shape[-1])
  texts = [tokenizer.decode(t[m].tolist(), skip_special_tokens=True)
           for t, m in zip(flat_t, flat_m)]
  return np.array(texts, dtype=object).reshape(lead).tolist()
