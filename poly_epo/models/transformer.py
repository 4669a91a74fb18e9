"""The policy: a Llama / Qwen2 / Qwen3-family decoder written in Flax NNX.

Shape letters: B batch, T new tokens, S cache slots (keys), D hidden, V vocab,
N query heads, K key/value heads, G = N // K query heads per kv head, H head
dim, F MLP width.

One forward covers training and prefill. Without a cache it is causal
self-attention over `tokens_BT` with an optional padding mask (or packed
segments). With a `KVCache` (the rollout engine's prefill) the new tokens'
keys/values are written at `cache_index` and the queries attend to every
valid slot up to their own. `Transformer.decode` is the engine's decode
step: one token per row, written at that row's own slot.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from poly_epo.models.config import ModelConfig
from poly_epo.engine import kernels, pool
from poly_epo.engine.kernels import prefix
from poly_epo.sharding import constrain_rows

_NEG = -1e30  # Finite "minus infinity": fully masked rows stay NaN-free.


class KVCache(NamedTuple):
  """Per-layer keys and values plus which slots hold real tokens.

  k: tuple (one per layer) of [B, K, H, S] (keys stored transposed);
  v: tuple of [B, K, S, H]; mask_BS: bool [B, S].
  """
  k: tuple
  v: tuple
  mask_BS: jax.Array


def init_cache(cfg: ModelConfig, batch: int, length: int,
               dtype=None) -> KVCache:
  dtype = dtype or cfg.dtype
  k, h = cfg.num_kv_heads, cfg.head_dim
  zeros = lambda shape: jnp.zeros(shape, dtype)
  return KVCache(tuple(zeros((batch, k, h, length))
                       for _ in range(cfg.num_layers)),
                 tuple(zeros((batch, k, length, h))
                       for _ in range(cfg.num_layers)),
                 jnp.zeros((batch, length), bool))


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """[H/2] float32 inverse frequencies, with optional linear/llama3 scaling."""
  h = cfg.head_dim
  inv = 1.0 / (cfg.rope_theta**(np.arange(0, h, 2, dtype=np.int64)
                                .astype(np.float32) / h))
  inv = inv.astype(np.float32)
  if cfg.rope_scaling is None:
    return inv
  kind, factor = cfg.rope_scaling[0], cfg.rope_scaling[1]
  if kind == "linear":
    return (inv / factor).astype(np.float32)
  low, high, old_len = cfg.rope_scaling[2:]
  low_wavelen, high_wavelen = old_len / low, old_len / high
  wavelen = 2 * np.pi / inv
  scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
  smooth = (old_len / wavelen - low) / (high - low)
  smoothed = (1 - smooth) * scaled / factor + smooth * scaled
  medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def rope_table(cfg: ModelConfig, length: int):
  """(cos, sin) of every position < length: float32 [length, H/2] each.

  Passing this to the model (`rope_table=`) turns RoPE into a gather. Inside
  the decode loop that matters: XLA:CPU otherwise recomputes sin/cos inside
  every fused consumer, per element.
  """
  angles = jnp.arange(length, dtype=jnp.float32)[:, None] * jnp.asarray(
      rope_inv_freq(cfg))
  return jnp.cos(angles), jnp.sin(angles)


def apply_rope(x_BTnH, cos_BTH, sin_BTH):
  """Rotate-half RoPE (the HF convention) on [B, T, n, H]."""
  half = x_BTnH.shape[-1] // 2
  x1, x2 = x_BTnH[..., :half], x_BTnH[..., half:]
  cos = cos_BTH[:, :, None, :].astype(x_BTnH.dtype)
  sin = sin_BTH[:, :, None, :].astype(x_BTnH.dtype)
  return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)


def _normal(rngs, shape, dtype, std=0.02):
  return nnx.Param(std * jax.random.normal(rngs.params(), shape, dtype))


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, dtype):
    self.eps = eps
    self.weight = nnx.Param(jnp.ones((dim,), dtype))

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, -1, keepdims=True) + self.eps)
    return self.weight[...].astype(x.dtype) * y.astype(x.dtype)


def attend(q_BTNH, k_BKHS, v_BKSH, mask_BTS):
  """Grouped-query softmax attention; returns [B, T, N, H].

  Keys come transposed ([B, K, H, S]) and values kv-head-major ([B, K, S, H]):
  the layouts XLA:CPU's batched matmuls want, so the decode loop never copies
  the cache into another layout (measured ~1.5x faster per decode step than
  the [B, S, K, H] cache on 2 CPU cores).
  """
  b, t, n, h = q_BTNH.shape
  kh = k_BKHS.shape[1]
  q = q_BTNH.reshape(b, t, kh, n // kh, h)
  if t == 1:
    scores = jnp.einsum("bkgh,bkhs->bkgs", q[:, 0], k_BKHS)[:, :, :, None]
  else:
    scores = jnp.einsum("btkgh,bkhs->bkgts", q, k_BKHS)
  scores = scores.astype(jnp.float32) * (h**-0.5)
  scores = jnp.where(mask_BTS[:, None, None], scores, _NEG)
  probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)  # [B, K, G, T, S]
  if t == 1:
    out = jnp.einsum("bkgs,bksh->bkgh", probs[:, :, :, 0], v_BKSH)[:, None]
  else:
    out = jnp.einsum("bkgts,bksh->btkgh", probs, v_BKSH)
  return out.reshape(b, t, n, h)


def attend_dpa(q_BTNH, k_BTKH, v_BTKH, mask_BTS, implementation: str):
  """The same attention through `jax.nn.dot_product_attention` ([B, T, N, H]).

  implementation "xla" everywhere; "cudnn" is the fused flash kernel on
  NVIDIA GPUs (bf16/fp16 only). Rows with no valid key (padding queries)
  differ from `attend` but are masked out of every loss.
  """
  out = jax.nn.dot_product_attention(
      q_BTNH, k_BTKH.astype(q_BTNH.dtype), v_BTKH.astype(q_BTNH.dtype),
      mask=mask_BTS[:, None], implementation=implementation)
  return out.astype(q_BTNH.dtype)


def attend_in_chunks(fn, q_BTNH, mask_BTS, chunk: int):
  """`fn(q, mask)` over blocks of `chunk` queries, each under
  `jax.checkpoint`, so attention scores are [B, N, chunk, S] at a time in
  the forward and the backward pass (0: all queries at once)."""
  b, t, n, h = q_BTNH.shape
  if not chunk or chunk >= t:
    return fn(q_BTNH, mask_BTS)
  blocks = -(-t // chunk)
  pad = blocks * chunk - t
  q = jnp.pad(q_BTNH, ((0, 0), (0, pad), (0, 0), (0, 0)))
  m = jnp.pad(mask_BTS, ((0, 0), (0, pad), (0, 0)))
  q = jnp.moveaxis(q.reshape(b, blocks, chunk, n, h), 1, 0)
  m = jnp.moveaxis(m.reshape(b, blocks, chunk, -1), 1, 0)
  out = jax.lax.map(jax.checkpoint(lambda qm: fn(*qm)), (q, m))
  return jnp.moveaxis(out, 0, 1).reshape(b, blocks * chunk, n, h)[:, :t]


class Attention(nnx.Module):
  """GQA self-attention with one fused q/k/v projection.

  `qkv_proj` is [D, K, G + 2, H]: for each kv head, its G query heads, then
  its key, then its value. One [D, K*(G+2)*H] matmul is markedly faster on CPU
  than three, and sharding the K axis keeps every group on one device.
  """

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    d, n, k, h = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    self.cfg = cfg
    self.qkv_proj = _normal(rngs, (d, k, n // k + 2, h), pd)
    self.o_proj = _normal(rngs, (n, h, d), pd)
    if cfg.qkv_bias:
      self.qkv_bias = nnx.Param(jnp.zeros((k, n // k + 2, h), pd))
    if cfg.o_bias:
      self.o_bias = nnx.Param(jnp.zeros((d,), pd))
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, cfg.rms_norm_eps, pd)
      self.k_norm = RMSNorm(h, cfg.rms_norm_eps, pd)

  def __call__(self, x_BTD, cos_BTH, sin_BTH, mask_BTS, kv=None,
               cache_index=None, segment_BT=None):
    """Returns (out_BTD, (k_BKHS, v_BKSH)): the keys/values attended to
    (None in the no-cache forward through `jax.nn.dot_product_attention`).
    `segment_BT` (no-cache forward): int segment ids, 0 = padding; splash
    attention takes them, the other paths read `mask_BTS`."""
    cfg, dt = self.cfg, x_BTD.dtype
    b, t, d = x_BTD.shape
    n, h = cfg.num_heads, cfg.head_dim
    q, k, v = self._qkv(x_BTD, cos_BTH, sin_BTH)
    if kv is None:  # Training / scoring forward: nothing to cache.
      if cfg.attention == "splash":  # Its own blocking: no query chunks.
        from poly_epo.models.splash import attend_splash
        # Without segments mask_BTS's last row is the padding mask.
        seg = segment_BT if segment_BT is not None else mask_BTS[:, -1, :]
        out = attend_splash(q, k, v, seg)
      else:
        if cfg.attention == "einsum":
          kt = jnp.transpose(k, (0, 2, 3, 1))
          vt = jnp.transpose(v, (0, 2, 1, 3))
          fn = lambda q_, m_: attend(q_, kt.astype(dt), vt.astype(dt), m_)
        else:
          fn = lambda q_, m_: attend_dpa(q_, k, v, m_, cfg.attention)
        out = attend_in_chunks(fn, q, mask_BTS, cfg.attention_chunk)
      kv_out = None
    else:
      k = jnp.transpose(k, (0, 2, 3, 1))  # [B, K, H, T]
      v = jnp.transpose(v, (0, 2, 1, 3))  # [B, K, T, H]
      if kv is not None:
        k_cache, v_cache = kv
        k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype),
                                         (0, 0, 0, cache_index))
        v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype),
                                         (0, 0, cache_index, 0))
      out = attend(q, k.astype(dt), v.astype(dt), mask_BTS)
      kv_out = (k, v)
    return self._out(out.reshape(b, t, n * h)), kv_out

  def _qkv(self, x_BTD, cos_BTH, sin_BTH):
    """Roped q [B, T, N, H] and k, v [B, T, K, H] in x's dtype."""
    cfg, dt = self.cfg, x_BTD.dtype
    b, t, d = x_BTD.shape
    n, kh, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    g = n // kh
    qkv = x_BTD @ self.qkv_proj[...].astype(dt).reshape(d, -1)  # free
    qkv = qkv.reshape(b, t, kh, g + 2, h)
    if cfg.qkv_bias:
      qkv = qkv + self.qkv_bias[...].astype(dt)
    q = qkv[:, :, :, :g].reshape(b, t, n, h)
    k, v = qkv[:, :, :, g], qkv[:, :, :, g + 1]
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    return apply_rope(q, cos_BTH, sin_BTH), apply_rope(k, cos_BTH, sin_BTH), v

  def _out(self, out_BTX):
    dt = out_BTX.dtype
    d = self.cfg.hidden_size
    out = out_BTX @ self.o_proj[...].astype(dt).reshape(-1, d)
    if self.cfg.o_bias:
      out = out + self.o_bias[...].astype(dt)
    return out

  def decode(self, x_N1D, cos_N1H, sin_N1H, k_NKHC, v_NKCH, slot_N, *,
             impl: str, block: int, window=None, keys_ch: bool = False,
             table_NM=None, platform: str = "cpu"):
    """One new token per row, written at its own slot `slot_N`; attends to
    slots [0, slot_N] with the decode kernel `impl` (`engine.kernels`).
    The caches may hold more rows than x (rows past N are left alone).
    Returns (out [N, 1, D], k_NKHC, v_NKCH). With page tables `table_NM`
    the caches are page pools (`engine/pool.py`); as (prompt, responses)
    pairs they are the prefix cache and `table_NM` the rows' prompt
    lengths (`engine/kernels/prefix.py`)."""
    cfg = self.cfg
    n_rows = x_N1D.shape[0]
    kh, h = cfg.num_kv_heads, cfg.head_dim
    q, k, v = self._qkv(x_N1D, cos_N1H, sin_N1H)
    rows = jnp.arange(n_rows)
    # Finite keys and values only: attention weighs stale slots 0, not
    # 0 x NaN (values), and the Pallas kernel masks keys by adding a large
    # negative number (a NaN key would survive it).
    finite = lambda x: jnp.nan_to_num(x, posinf=0.0, neginf=0.0)
    if isinstance(k_NKHC, tuple):  # The prefix cache; table_NM: plen_N.
      k_NKHC = prefix.write_token(k_NKHC, finite(k[:, 0]), table_NM,
                                  slot_N, keys=True)
      v_NKCH = prefix.write_token(v_NKCH, finite(v[:, 0]), table_NM,
                                  slot_N, keys=False)
      k_read, v_read = k_NKHC, v_NKCH
    elif table_NM is not None:
      k_NKHC = pool.write_token(k_NKHC, finite(k[:, 0]), table_NM, slot_N)
      v_NKCH = pool.write_token(v_NKCH, finite(v[:, 0]), table_NM, slot_N)
      k_read, v_read = k_NKHC, v_NKCH
    else:
      if keys_ch:  # Keys stored like values, [N, K, C, H].
        k_NKHC = k_NKHC.at[rows, :, slot_N, :].set(
            finite(k[:, 0]).astype(k_NKHC.dtype))
      else:
        k_NKHC = k_NKHC.at[rows, :, :, slot_N].set(
            finite(k[:, 0]).astype(k_NKHC.dtype))
      v_NKCH = v_NKCH.at[rows, :, slot_N, :].set(
          finite(v[:, 0]).astype(v_NKCH.dtype))
      # Fewer rows than cache rows: the engine's narrowed steps decode the
      # first n_rows slots only.
      k_read, v_read = k_NKHC[:n_rows], v_NKCH[:n_rows]
    out = kernels.attend(impl, q[:, 0].reshape(n_rows, kh, -1, h), k_read,
                         v_read, slot_N + 1, block=block, window=window,
                         keys_ch=keys_ch, table_NM=table_NM,
                         platform=platform)
    return self._out(out.reshape(n_rows, 1, -1)), k_NKHC, v_NKCH


class MLP(nnx.Module):
  """SwiGLU MLP; `gate_up_proj` [D, 2, F] fuses the gate and up matmuls."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    d, f = cfg.hidden_size, cfg.intermediate_size
    self.cfg = cfg
    self.gate_up_proj = _normal(rngs, (d, 2, f), pd)
    self.down_proj = _normal(rngs, (f, d), pd)
    if cfg.mlp_bias:
      self.gate_up_bias = nnx.Param(jnp.zeros((2, f), pd))
      self.down_bias = nnx.Param(jnp.zeros((d,), pd))

  def __call__(self, x_BTD):
    dt = x_BTD.dtype
    w = lambda p: p[...].astype(dt)
    b, t, d = x_BTD.shape
    gate_up = (x_BTD @ w(self.gate_up_proj).reshape(d, -1)).reshape(
        b, t, 2, -1)
    if self.cfg.mlp_bias:
      gate_up = gate_up + w(self.gate_up_bias)
    out = (jax.nn.silu(gate_up[:, :, 0]) * gate_up[:, :, 1]) @ w(self.down_proj)
    if self.cfg.mlp_bias:
      out = out + w(self.down_bias)
    return out


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    self.attn = Attention(cfg, rngs)
    self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x_BTD, cos, sin, mask_BTS, kv=None, cache_index=None,
               segment_BT=None):
    h, kv = self.attn(self.input_norm(x_BTD), cos, sin, mask_BTS, kv,
                      cache_index, segment_BT)
    return self._mlp(x_BTD + h), kv

  def decode(self, x_N1D, cos, sin, k_cache, v_cache, slot_N, **attn):
    """`Attention.decode` in the block: (x, k_cache, v_cache)."""
    h, k_cache, v_cache = self.attn.decode(self.input_norm(x_N1D), cos, sin,
                                           k_cache, v_cache, slot_N, **attn)
    return self._mlp(x_N1D + h), k_cache, v_cache

  def _mlp(self, x_BTD):
    return x_BTD + self.mlp(self.post_attn_norm(x_BTD))


class Transformer(nnx.Module):
  """Decoder-only LM. `model(tokens_BT)` -> logits [B, T, V] (float32)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    pd = jnp.dtype(cfg.param_dtype)
    self.cfg = cfg
    self.embed = _normal(rngs, (cfg.vocab_size, cfg.hidden_size), pd)
    self.layers = nnx.List([Block(cfg, rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, pd)
    if not cfg.tie_embeddings:
      self.lm_head = _normal(rngs, (cfg.vocab_size, cfg.hidden_size), pd)

  def __call__(self, tokens_BT, positions_BT=None, attention_mask_BT=None, *,
               cache: KVCache | None = None, cache_index=None,
               last_only: bool = False, rope_table=None,
               hidden_only: bool = False, segment_ids_BT=None):
    """Forward pass.

    Args:
      tokens_BT: int32 [B, T].
      positions_BT: int32 [B, T] RoPE positions. Default: the count of real
        tokens before each token (left padding gets the right positions), plus
        `cache_index` offset semantics are the caller's when a cache is used.
      attention_mask_BT: bool/0-1 [B, T], 1 for real tokens. Default all real.
      cache: a `KVCache`; the new tokens are written at slot `cache_index`.
      cache_index: int32 scalar, first cache slot of the new tokens.
      last_only: return logits of the last position only ([B, 1, V]).
      rope_table: optional `rope_table(cfg, n)` output covering every position.
      hidden_only: return the final-normed hidden states [B, T, D] (compute
        dtype) instead of logits, for chunked log-probs (poly_epo.logprobs).
      segment_ids_BT: int32 [B, T] packed sequences (no cache): a token
        attends only to earlier tokens of its own segment; 0 = padding.
        Pass `positions_BT` too (positions within each sequence).

    Returns:
      logits [B, T, V] float32, or (logits, new_cache) when `cache` is given.
    """
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    b, t = tokens_BT.shape
    if attention_mask_BT is None:
      attention_mask_BT = jnp.ones((b, t), bool)
    attention_mask_BT = attention_mask_BT.astype(bool)
    if positions_BT is None:
      positions_BT = jnp.maximum(
          jnp.cumsum(attention_mask_BT.astype(jnp.int32), axis=1) - 1, 0)
      if cache is not None:
        positions_BT = positions_BT + jnp.sum(cache.mask_BS, 1,
                                              keepdims=True).astype(jnp.int32)
    if rope_table is None:
      inv_freq = jnp.asarray(rope_inv_freq(cfg))
      angles = positions_BT.astype(jnp.float32)[..., None] * inv_freq
      cos, sin = jnp.cos(angles), jnp.sin(angles)  # [B, T, H/2] each
    else:
      cos, sin = rope_table[0][positions_BT], rope_table[1][positions_BT]

    if cache is None:
      causal = jnp.tril(jnp.ones((t, t), bool))
      mask_BTS = causal[None] & attention_mask_BT[:, None, :]
      if segment_ids_BT is not None:
        mask_BTS = mask_BTS & (segment_ids_BT[:, :, None] ==
                               segment_ids_BT[:, None, :])
      new_mask = None
    else:
      new_mask = jax.lax.dynamic_update_slice(cache.mask_BS, attention_mask_BT,
                                              (0, cache_index))
      s = cache.mask_BS.shape[1]
      slot_S = jnp.arange(s)
      query_slot_T = cache_index + jnp.arange(t)
      mask_BTS = new_mask[:, None, :] & (slot_S[None, None, :]
                                         <= query_slot_T[None, :, None])

    x = constrain_rows(jnp.take(self.embed[...], tokens_BT, axis=0)
                       .astype(dt))
    new_k, new_v = [], []
    if cache is None:
      for layer in self.layers:
        x = constrain_rows(_layer_forward(layer, x, cos, sin, mask_BTS,
                                          cfg.remat, segment_ids_BT))
    else:
      for i, layer in enumerate(self.layers):
        x, (k, v) = layer(x, cos, sin, mask_BTS, (cache.k[i], cache.v[i]),
                          cache_index)
        x = constrain_rows(x)
        new_k.append(k)
        new_v.append(v)
    if last_only:
      x = x[:, -1:]
    x = self.final_norm(x)
    if hidden_only:
      return x if cache is None else (
          x, KVCache(tuple(new_k), tuple(new_v), new_mask))
    logits = self.logits(x)
    if cache is None:
      return logits
    return logits, KVCache(tuple(new_k), tuple(new_v), new_mask)

  def decode(self, token_N, k_caches, v_caches, slot_N, rope_table, *,
             impl: str = "window", block: int = 128, window=None,
             keys_ch: bool = False, table_NM=None, platform: str = "cpu"):
    """One decode step of the rollout engine (rows packed from slot 0).

    Args:
      token_N: int32 [N] each row's newest token; it is written at slot
        `slot_N` (= its position) of that row and attends to [0, slot_N].
      k_caches / v_caches: per-layer [S, K, H, C] ([S, K, C, H] with
        `keys_ch`) / [S, K, C, H], S >= N: token n is row n's.
      rope_table: `rope_table(cfg, C)`.
      impl, block, window, keys_ch, platform: the decode kernel's
        (`engine.kernels`; `platform`: the devices compiled for).
      table_NM: page tables when the caches are page pools
        ([K, NP + 1, page, H] per layer; `engine/pool.py`).

    Returns:
      (logits [N, V] float32, k_caches, v_caches).
    """
    dt = jnp.dtype(self.cfg.dtype)
    pos = slot_N[:, None]
    cos, sin = rope_table[0][pos], rope_table[1][pos]
    x = jnp.take(self.embed[...], token_N[:, None], axis=0).astype(dt)
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      x, k, v = layer.decode(x, cos, sin, k_caches[i], v_caches[i], slot_N,
                             impl=impl, block=block, window=window,
                             keys_ch=keys_ch, table_NM=table_NM,
                             platform=platform)
      new_k.append(k)
      new_v.append(v)
    logits = self.logits(self.final_norm(x))[:, 0]
    return logits, tuple(new_k), tuple(new_v)

  def head(self) -> jax.Array:
    """The output projection [V, D] (the embedding when tied)."""
    return (self.embed if self.cfg.tie_embeddings else self.lm_head)[...]

  def logits(self, x_BTD):
    """Float32 logits [B, T, V] of final-normed hidden states."""
    return jnp.einsum("btd,vd->btv", x_BTD,
                      self.head().astype(x_BTD.dtype)).astype(jnp.float32)


def _layer_forward(layer: Block, x_BTD, cos, sin, mask_BTS, remat: str,
                   segment_BT=None):
  """One layer of the no-cache forward, under `jax.checkpoint` unless
  remat == "none" (functional split/merge, so it composes with any outer
  jit / scan / map)."""
  if remat == "none":
    return layer(x_BTD, cos, sin, mask_BTS, segment_BT=segment_BT)[0]
  graphdef, state = nnx.split(layer)

  def fwd(state, x, cos, sin, mask, seg):
    return nnx.merge(graphdef, state)(x, cos, sin, mask,
                                      segment_BT=seg)[0]
  return jax.checkpoint(fwd, policy=_REMAT_POLICIES[remat])(
      state, x_BTD, cos, sin, mask_BTS, segment_BT)


_REMAT_POLICIES = {
    "full": None,  # Save only each layer's input; recompute the rest.
    "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
  """A randomly initialised model (std 0.02 normal weights, unit norms)."""
  return Transformer(cfg, rngs=nnx.Rngs(params=seed))
