"""poly_epo.tokenizer: char tokenizer round trip, left padding, save/load."""

import numpy as np
import pytest

from poly_epo.tokenizer import (char_tokenizer, decode_completions,
                                encode_prompts, load_tokenizer)


def test_round_trip_and_specials():
  tok = char_tokenizer()
  text = "y=2x^2-3x+5, x in [-4,7] -> (1,4)"
  ids = tok.encode(text, add_special_tokens=False)
  assert len(ids) == len(text)  # One token per character.
  assert tok.decode(ids) == text
  assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
  assert tok.encode("\u00e9", add_special_tokens=False) == [tok.unk_token_id]


def test_left_padding():
  tok = char_tokenizer("abc")
  tokens, mask = encode_prompts(tok, ["ab", "abca", ""], pad_to_multiple=3)
  assert tokens.shape == (3, 6) and tokens.dtype == np.int32
  np.testing.assert_array_equal(mask.sum(1), [2, 4, 0])
  assert mask[0].tolist() == [False] * 4 + [True] * 2  # Real tokens at right.
  assert (tokens[~mask] == tok.pad_token_id).all()
  assert tok.decode(tokens[1][mask[1]].tolist()) == "abca"
  with pytest.raises(ValueError, match="prompt 1 has 4 tokens"):
    encode_prompts(tok, ["ab", "abca"], max_length=3)
  fixed, fixed_mask = encode_prompts(tok, ["ab", "abca"], width=7)
  assert fixed.shape == (2, 7) and fixed_mask[0].tolist() == [False] * 5 + [
      True] * 2
  with pytest.raises(ValueError, match="more than width=3"):
    encode_prompts(tok, ["ab", "abca"], width=3)


def test_save_load_and_decode_completions(tmp_path):
  tok = char_tokenizer("0123456789(),")
  tok.save_pretrained(str(tmp_path))
  again = load_tokenizer(str(tmp_path))
  assert again.padding_side == "left"
  assert again.encode("(1,2)", add_special_tokens=False) == tok.encode(
      "(1,2)", add_special_tokens=False)
  ids = tok.encode("(3,4)", add_special_tokens=False) + [tok.eos_token_id, 0]
  tokens = np.array([[ids, ids]])
  mask = np.ones_like(tokens, bool)
  mask[..., -1] = False
  assert decode_completions(again, tokens, mask) == [["(3,4)", "(3,4)"]]
  with pytest.raises(FileNotFoundError, match="missing"):
    load_tokenizer(str(tmp_path / "missing"))


def test_chat_format_uses_the_template_when_there_is_one():
  from poly_epo.tokenizer import chat_format, char_tokenizer, encode_prompts
  tok = char_tokenizer()
  assert chat_format(tok, "x=1") == "x=1"  # No template: raw text.
  tok.chat_template = ("{% for m in messages %}U:{{ m['content'] }};"
                       "{% endfor %}{% if add_generation_prompt %}A:"
                       "{% endif %}")
  assert chat_format(tok, "x=1") == "U:x=1;A:"
  plain, _ = encode_prompts(tok, ["x=1"])
  chat, _ = encode_prompts(tok, ["x=1"], chat=True)
  assert chat.shape[1] == plain.shape[1] + len("U:;A:")
  assert tok.decode(chat[0].tolist()) == "U:x=1;A:"
