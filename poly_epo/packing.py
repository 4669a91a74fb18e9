"""Sequence packing for the update: the rollout's sequences end to end in
fixed-width rows, so the old-log-prob pass and the update stop paying for
padding (`config.packing`).

A sequence is its prompt's real tokens, then its response's valid tokens.
Within each (minibatch, micro-batch) group of the update and each device's
share of it, sequences are packed greedily in order into rows of W = P + L
tokens (any one sequence fits a row); a token carries its sequence's segment
id (1, 2, ... within its row; 0 = padding) and its position within its
sequence, so attention never crosses sequences and RoPE sees the positions
of the padded layout. `index_SL` says where the hidden state predicting each
response token sits in the device's flattened rows, so the loss runs on the
padded [S, L] layout unchanged (losses.py): only the forward is packed.

Rows per device and group, R, is the most any group needs, rounded up to a
multiple of an eighth of the group's sequences (at most 8 compiled shapes).
Row order follows `update._update`'s strided split: sequence s = c * (micro
x mini) + b * mini + a is in minibatch a, micro-batch b.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import numpy as np

from poly_epo import distributed, sharding, update


class Packed(NamedTuple):
  """Packed rows in the update's flat order ([mini x micro x D x R] rows of
  W) and the response-token index [S, L] into each device's group rows."""
  tokens_RW: np.ndarray  # int32
  segment_RW: np.ndarray  # int32, 0 = padding
  position_RW: np.ndarray  # int32
  index_SL: np.ndarray  # int32, into the device's [R x W] flattened rows
  rows: int  # R per device per group
  real_tokens: int  # prompt + response tokens packed


def _pack_group(seqs, width: int):
  """Greedy packing of token lists into rows: [(row, start)] per sequence."""
  places, row, used = [], 0, 0
  for s in seqs:
    if used + len(s) > width:
      row, used = row + 1, 0
    places.append((row, used))
    used += len(s)
  return places, row + 1


def _layout(tokens_ST, attn_ST, mask_SL, mini, micro, devices):
  s, t = tokens_ST.shape
  length = mask_SL.shape[1]
  p = t - length
  seqs = [np.concatenate([tokens_ST[i, :p][attn_ST[i, :p]],
                          tokens_ST[i, p:][mask_SL[i]]]) for i in range(s)]
  per = s // (mini * micro)
  if per % devices:
    raise ValueError(f"packing: {per} sequences per micro-batch do not "
                     f"split over {devices} devices")
  n_dev = per // devices
  groups, most = {}, 1
  for a in range(mini):
    for b in range(micro):
      for d in range(devices):
        ids = [c * micro * mini + b * mini + a
               for c in range(d * n_dev, (d + 1) * n_dev)]
        places, used = _pack_group([seqs[i] for i in ids], t)
        groups[a, b, d] = (ids, places)
        most = max(most, used)
  return groups, most, seqs, n_dev


def bucket_rows(rows: int, n_dev: int) -> int:
  """`rows` rounded up to a multiple of ceil(n_dev / 8), at most n_dev."""
  step = -(-n_dev // 8)
  return min(-(-rows // step) * step, n_dev)


def pack(tokens_ST, attn_ST, mask_SL, *, minibatches: int = 1,
         microbatches: int = 1, devices: int = 1, rows: int = 0,
         agree=None) -> Packed:
  """Pack this process's S sequences (NumPy [S, P + L] left-padded prompt +
  response, `attn_ST` real tokens, `mask_SL` valid response tokens) for
  `devices` local devices; `rows` forces R (>= what is needed); `agree`
  maps this process's rows needed to every process's most (the same R
  on every process)."""
  tokens_ST = np.asarray(tokens_ST)
  attn_ST = np.asarray(attn_ST, bool)
  mask_SL = np.asarray(mask_SL, bool)
  mini, micro = minibatches, microbatches
  groups, most, seqs, n_dev = _layout(tokens_ST, attn_ST, mask_SL, mini,
                                      micro, devices)
  if agree is not None:
    most = agree(most)
  r = rows or bucket_rows(most, n_dev)
  if r < most:
    raise ValueError(f"packing: {r} rows per group given, {most} needed")
  s, w = tokens_ST.shape
  length = mask_SL.shape[1]
  total = r * devices  # Packed rows per group.
  tok = np.zeros((total * micro * mini, w), np.int32)
  seg = np.zeros_like(tok)
  pos = np.zeros_like(tok)
  index = np.zeros((s, length), np.int32)
  ls = np.arange(length)
  for (a, b, d), (ids, places) in groups.items():
    for k, (i, (row, start)) in enumerate(zip(ids, places)):
      c = d * r + row  # Packed row within the group.
      flat = c * micro * mini + b * mini + a
      n = len(seqs[i])
      tok[flat, start:start + n] = seqs[i]
      seg[flat, start:start + n] = k + 1
      pos[flat, start:start + n] = np.arange(n)
      prompt = n - int(mask_SL[i].sum())
      # Response token l sits at start + prompt + l; its logits come from
      # the position before it, in the device's [R, W] rows of the group.
      index[i] = row * w + start + max(prompt - 1, 0) + np.minimum(
          ls, max(n - prompt - 1, 0))
  return Packed(tok, seg, pos, index, r, sum(len(x) for x in seqs))


def packed_batch(batch, minibatches: int, microbatches: int, mesh):
  """This process's `update.RolloutBatch` (NumPy) as an
  `update.PackedBatch`, with the same rows per group on every process."""
  pk = pack(batch.tokens_ST, batch.attn_ST, batch.mask_SL,
            minibatches=minibatches, microbatches=microbatches,
            devices=sharding.batch_shards(mesh) // jax.process_count(),
            agree=lambda most: int(distributed.allgather(
                np.array([most])).max()))
  return update.PackedBatch(pk.tokens_RW, pk.segment_RW, pk.position_RW,
                            pk.index_SL, batch.mask_SL, batch.old_logp_SL,
                            batch.adv_S)
