r"""Batches of clip indices, every way the workbench cuts them: shuffled (:func:`random_batches`), shuffled and
length-bucketed for training (:func:`bucketed_batches`), sorted by length under a padded-step budget for
inference (:func:`length_batches`), and dealt to DDP ranks (:func:`shard`). Grouping clips of similar length
means little of a padded batch is padding.

:func:`bucketed_batches` (ours, the usual "sort within shuffled mega-chunks" scheme): the epoch's
random permutation (from :func:`~emi_lib.train.seeding.epoch_generator`, a pure function of
(seed, epoch)) is cut into mega-chunks of ``chunk_batches * batch_size`` clips; each chunk is sorted
by length and cut into batches; the batch order is then shuffled. Batches stay random from epoch to
epoch (which clips meet depends on the permutation) while each batch's lengths are close.

With several length columns (e.g. vision and audio steps) the sort key is their sum.

:func:`length_batches` (stage-1 encoding and export, where the order does not matter): all clips sorted by
length, cut greedily so that a batch holds at most ``max_batch`` clips and at most ``max_tokens`` padded steps
(clips x its longest clip).

:func:`padding_share` measures the waste: for batches :math:`B_k` and lengths :math:`L_i` (per column),

.. math::

    \mathrm{padding} = 1 - \frac{\sum_k \sum_{i \in B_k} L_i}{\sum_k |B_k| \max_{i \in B_k} L_i},

the share of the padded batch tensors' steps that are padding (summed over columns).
"""

from __future__ import annotations

import numpy as np
import torch

from emi_lib.train.seeding import epoch_generator


def _as_lengths(lengths) -> np.ndarray:
    lens = np.asarray(lengths, dtype=np.int64)
    return lens[:, None] if lens.ndim == 1 else lens


def drop_incomplete(batches: list, batch_size: int) -> list:
    """``batches`` without a final batch smaller than ``batch_size``, unless it is the only batch (a tiny batch
    gives a noisy Pearson term or too few negatives)."""
    if len(batches) > 1 and len(batches[-1]) < batch_size:
        return batches[:-1]
    return batches


def shard(batches: list, rank: int, world_size: int, even: bool = True) -> list:
    """Batches i with i % world_size == rank. With ``even`` (training under DDP) the list is first
    cut to a multiple of world_size, so that every rank runs the same number of steps."""
    if world_size <= 1:
        return list(batches)
    if even:
        batches = batches[: len(batches) - len(batches) % world_size]
    return [b for i, b in enumerate(batches) if i % world_size == rank]


def bucketed_batches(lengths, batch_size: int, seed: int, epoch: int, drop_last: bool = False,
                     rank: int = 0, world_size: int = 1, chunk_batches: int = 50) -> list[list[int]]:
    """This rank's batches (lists of indices into ``lengths``) for one epoch (module docstring).

    ``lengths``: (n,) or (n, k) steps per clip. ``drop_last=False`` (evaluation): every index exactly
    once over all ranks; with ``world_size > 1`` a few batches are split in two so that every rank
    gets the same number of batches (a rank may get an empty batch only when n < world_size).
    ``drop_last=True`` (training): a final incomplete batch is dropped (unless it is the only one)
    and the batch list is cut to a multiple of ``world_size``."""
    if batch_size < 1 or chunk_batches < 1:
        raise ValueError("batch_size and chunk_batches must be >= 1")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world_size {world_size}")
    key = _as_lengths(lengths).sum(1)
    n = len(key)
    g = epoch_generator(seed, epoch)
    perm = torch.randperm(n, generator=g).numpy()
    chunk = batch_size * chunk_batches
    batches: list[list[int]] = []
    for s in range(0, n, chunk):
        part = perm[s: s + chunk]
        part = part[np.argsort(key[part], kind="stable")]
        batches += [part[i: i + batch_size].tolist() for i in range(0, len(part), batch_size)]
    if drop_last:
        batches = drop_incomplete(batches, batch_size)
    batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
    while world_size > 1 and not drop_last and len(batches) % world_size:  # split the largest batch in two
        big = max(range(len(batches)), key=lambda j: len(batches[j])) if batches else None
        if big is None or len(batches[big]) < 2:
            batches.append([])
            continue
        b = batches[big]
        batches[big: big + 1] = [b[: len(b) // 2], b[len(b) // 2:]]
    return shard(batches, rank, world_size, even=drop_last)


def length_batches(lengths, max_batch: int, max_tokens: int):
    """Index batches in order of length (stable), each with at most ``max_batch`` clips and ``max_tokens``
    padded steps (module docstring); a clip of length 0 counts as 1 step. Yields lists of indices."""
    order = np.argsort(lengths, kind="stable")
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) + 1 > max_batch or (len(batch) + 1) * max(lengths[i], 1) > max_tokens):
            yield batch
            batch = []
        batch.append(int(i))
    if batch:
        yield batch


def padding_share(lengths, batches) -> float:
    """Padded steps / all steps of the padded batches (module docstring); 0.0 for no steps."""
    lens = _as_lengths(lengths)
    padded = real = 0
    for b in batches:
        if len(b):
            sub = lens[list(b)]
            padded += int(sub.max(0).sum()) * len(b)
            real += int(sub.sum())
    return 0.0 if padded == 0 else 1.0 - real / padded


def random_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Plain shuffled batches (no bucketing, none dropped): the reference for :func:`padding_share`."""
    perm = torch.randperm(n, generator=epoch_generator(seed, epoch)).tolist()
    return [perm[i: i + batch_size] for i in range(0, n, batch_size)]
