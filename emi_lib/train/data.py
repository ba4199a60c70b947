r"""Stage-2 data: per-clip feature sequences -> padded, masked batches for ``EMIModel``.

A split is a :class:`Stage2Data`: ``vision`` {id: (T_v, D_v)}, ``audio`` {id: (T_a, D_a)}, optional
``text`` {id: (D_t,)} (or (1, D_t)), optional ``labels`` (DataFrame indexed by id, the six EMOTIONS
columns) and optional ``priors`` (DataFrame indexed by id, see :mod:`emi_lib.features.quality`).
A clip lacking a modality has no key (or a (0, D) array, or only masked steps): its mask row is all
False and ``available[m]`` is False, and the model still predicts for it. A row of NaN is a masked
step (a frame without a detected face): its input is 0 and its mask False. The clip list is ``ids``, else the
labels' index, else the sorted union of the feature keys.

**Long sequences** (ours): a sequence longer than ``max_len`` steps is subsampled at evenly spaced
steps, :math:`t_j = \mathrm{round}(j (T-1)/(L-1))`, :math:`j = 0..L-1`, which keeps the whole clip's
span (a crop would drop its end) and is deterministic (train and evaluation see the same steps); the
batches are padded and masked as stage 1's (:mod:`emi_lib.models.padding`).

**Batch order**: :func:`epoch_batches` is a pure function of (seed, epoch) (a ``torch.Generator``
seeded per epoch), so a resumed run replays exactly the batches of the interrupted one. Under DDP,
rank r takes the batches i with i % world_size == r of that common order (:func:`shard`).
Evaluation batches are contiguous, never dropped, so every clip is scored. With ``lengths``
(``Stage2Dataset.lengths()``, when ``Stage2Config.bucket_by_length``) the training batches are
length-bucketed (:mod:`emi_lib.train.buckets`): same count, far less padding.

**Missing is not failed**: ``absent`` {stream: ids} lists the clips whose *media* for a stream are absent on
disk (:func:`media_absent`: no face crop, no audio file, no transcript); they legitimately lack the stream.
A clip with no features for a stream that is not listed there had media that gave no features (a failed
extraction): :meth:`Stage2Data.unexplained_missing`. Training refuses a split where such clips are more than
``Stage2Config.max_missing_share`` of it (:func:`check_missing_share`), naming them, instead of zero-filling
them as if the modality were missing. ``absent=None`` declares nothing: every clip lacking a stream counts.
(A clip whose every step is masked, e.g. no face found by the face mesh, *has* features: it is not counted.)

**Lazy stores**: a ``vision``/``audio`` mapping that is not a dict (a
:class:`~emi_lib.features.packed.PackedStore`, see :meth:`Stage2Data.from_packed`) is kept as is,
and :class:`Stage2Dataset` reads each batch's clips in ``collate`` instead of holding every
sequence in memory.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from emi_lib.constants import EMOTIONS, clip_key
from emi_lib.features.store import subsample_steps, valid_steps
from emi_lib.models.padding import pad_batch
from emi_lib.train.buckets import bucketed_batches, drop_incomplete, random_batches

STREAMS = ("vision", "audio", "text")
#: the media (DataRoot modalities) each stream's features are made from by default
STREAM_MEDIA: dict[str, str] = {"vision": "faces", "audio": "audio", "text": "text"}


def _norm_dict(d: Mapping | None) -> Mapping[str, np.ndarray]:
    """A plain dict with normalised ids; a lazy (non-dict) Mapping such as a
    :class:`~emi_lib.features.packed.PackedStore` is kept as is (its keys are already str ids)."""
    if isinstance(d, Mapping) and not isinstance(d, dict):
        return d
    return {clip_key(k): v for k, v in (d or {}).items()}


def _is_lazy(d) -> bool:
    """A mapping that knows clip lengths and D without reading data (``PackedStore``)."""
    return isinstance(d, Mapping) and not isinstance(d, dict) and hasattr(d, "length") and hasattr(d, "dim")


@dataclass
class Stage2Data:
    """One split's stage-2 inputs (see the module docstring)."""

    vision: dict
    audio: dict
    text: dict | None = None
    labels: pd.DataFrame | None = None
    priors: pd.DataFrame | None = None
    ids: list | None = None
    absent: dict | None = None  # {stream: ids whose media are absent on disk} (module docstring; media_absent)

    def __post_init__(self):
        self.vision, self.audio = _norm_dict(self.vision), _norm_dict(self.audio)
        if self.absent is not None:
            self.absent = {str(m): {clip_key(i) for i in v} for m, v in self.absent.items()}
        self.text = _norm_dict(self.text) if self.text is not None else None
        if self.labels is not None:
            missing = [e for e in EMOTIONS if e not in self.labels.columns]
            if missing:
                raise ValueError(f"labels lack the emotion columns {missing}")
            self.labels = self.labels.copy()
            self.labels.index = [clip_key(i) for i in self.labels.index]
        if self.priors is not None:
            self.priors = self.priors.copy()
            self.priors.index = [clip_key(i) for i in self.priors.index]
        if self.ids is None:
            if self.labels is not None:
                self.ids = list(self.labels.index)
            else:
                self.ids = sorted(set(self.vision) | set(self.audio) | set(self.text or {}))
        self.ids = [clip_key(i) for i in self.ids]
        if len(set(self.ids)) != len(self.ids):
            raise ValueError("ids hold duplicates")
        if self.labels is not None:
            lacking = [i for i in self.ids if i not in self.labels.index]
            if lacking:
                raise ValueError(f"{len(lacking)} clip(s) have no label row, e.g. {lacking[:5]}")

    @classmethod
    def from_store(cls, store, split: str, vision: tuple[str, str] | None = None,
                   audio: tuple[str, str] | None = None, text: tuple[str, str] | None = None,
                   labels: pd.DataFrame | None = None, priors: pd.DataFrame | None = None,
                   ids=None, absent: dict | None = None) -> Stage2Data:
        """Read a split from a :class:`~emi_lib.features.store.FeatureStore`; each stream is a
        ``(modality, backbone)`` pair (e.g. ``("vision_aligned", "stage1")``) or None (absent).
        ``absent``: the clips whose media are absent (:func:`media_absent`)."""
        def load(pair):
            return {} if pair is None else store.load_split(pair[0], pair[1], split)
        txt = None if text is None else {k: v.reshape(-1) for k, v in load(text).items()}
        return cls(load(vision), load(audio), txt, labels, priors, ids, absent)

    @classmethod
    def from_packed(cls, vision=None, audio=None, text=None, labels: pd.DataFrame | None = None,
                    priors: pd.DataFrame | None = None, ids=None, absent: dict | None = None) -> Stage2Data:
        """A split read lazily from packed stores (:mod:`emi_lib.features.packed`): ``vision`` /
        ``audio`` are store folders or ``PackedStore`` objects (None: absent); ``text`` (small) is
        read into memory as {id: (D_t,)}. ``absent``: the clips whose media are absent (:func:`media_absent`)."""
        from emi_lib.features.packed import PackedStore

        def open_(x):
            return {} if x is None else x if isinstance(x, PackedStore) else PackedStore(x)
        txt = None if text is None else {k: v.reshape(-1) for k, v in open_(text).items() if v.size}
        return cls(open_(vision), open_(audio), txt, labels, priors, ids, absent)

    def __len__(self) -> int:
        return len(self.ids)

    def has(self, stream: str, cid: str) -> bool:
        d = getattr(self, stream) or {}
        if _is_lazy(d):
            return cid in d and d.length(cid) > 0
        a = d.get(cid)
        if a is None or np.asarray(a).size == 0:
            return False
        a = np.asarray(a)
        return a.ndim < 2 or bool(valid_steps(a).any())  # every step masked: the stream is missing

    def has_features(self, stream: str, cid: str) -> bool:
        """Whether features exist for the clip (any steps, even all masked); False for no key or a (0, D) array."""
        d = getattr(self, stream) or {}
        if _is_lazy(d):
            return cid in d and d.length(cid) > 0
        a = d.get(cid)
        return a is not None and np.asarray(a).size > 0

    def unexplained_missing(self, stream: str) -> list[str]:
        """Clips without ``stream`` features whose media the data does not declare absent (``absent``):
        failed extractions, not missing modalities."""
        declared = (self.absent or {}).get(stream, set())
        return [c for c in self.ids if c not in declared and not self.has_features(stream, c)]

    def missing_counts(self) -> dict[str, int]:
        """Clips lacking each stream (no key or an empty array); text only when text is given."""
        streams = ["vision", "audio"] + (["text"] if self.text is not None else [])
        return {m: sum(not self.has(m, i) for i in self.ids) for m in streams}

    def dims(self) -> dict[str, int | None]:
        """Feature size of each stream from its first non-empty array (None when every clip lacks it)."""
        out = {}
        for m in STREAMS:
            d = getattr(self, m) or {}
            if _is_lazy(d):
                out[m] = int(d.dim) if any(d.length(i) for i in d) else None
                continue
            arrs = [np.asarray(a) for a in d.values() if np.asarray(a).size]
            out[m] = int(arrs[0].shape[-1]) if arrs else None
        return out


def media_absent(root, split: str, ids=None, media: Mapping[str, str] | None = None) -> dict[str, set[str]]:
    """``{stream: ids of the split whose media are absent on disk}`` (the ``absent`` of :class:`Stage2Data`).

    ``media`` {stream: DataRoot modality} (default :data:`STREAM_MEDIA`; e.g. ``"video"`` or ``"vit"`` for a
    vision stream made from the mp4 or the release's features). Absent: a face folder without crops, a missing
    or zero-byte file; a transcript only when missing (an empty one is a silent clip, valid)."""
    from emi_lib.data import DataRoot

    dr = root if isinstance(root, DataRoot) else DataRoot(root)
    ids = dr.ids(split) if ids is None else [clip_key(i) for i in ids]
    out = {}
    for stream, mod in {**STREAM_MEDIA, **(media or {})}.items():
        def gone(cid, mod=mod):
            if not dr.has(split, cid, mod):  # faces: no crop in the folder
                return True
            return mod not in ("faces", "text") and dr.path(split, cid, mod).stat().st_size == 0
        out[stream] = {c for c in ids if gone(c)}
    return out


def stream_media(stream: str, backbone: str) -> str:
    """The DataRoot modality a stream's features are made from, by its (store) backbone name: the release's
    ``vit`` / ``wav2vec2`` files for ``official``, the mp4 for a vision backbone on ``video`` frames, else
    :data:`STREAM_MEDIA` (face crops, audio, transcript)."""
    from emi_lib.features.extract import parse_store_backbone
    from emi_lib.features.extract_sources import OFFICIAL, OFFICIAL_FOLDERS

    base, settings = parse_store_backbone(stream, str(backbone))
    if stream in OFFICIAL_FOLDERS and base == OFFICIAL:
        return OFFICIAL_FOLDERS[stream]
    if stream == "vision" and settings.get("vision_source") == "video":
        return "video"
    return STREAM_MEDIA[stream]


def check_missing_share(data: Stage2Data, streams, max_share: float, split: str) -> None:
    """``ValueError`` naming the clips when more than ``max_share`` of ``data``'s clips lack a stream's
    features although their media exist (:meth:`Stage2Data.unexplained_missing`)."""
    n = len(data)
    for m in streams:
        bad = data.unexplained_missing(m)
        if n and len(bad) > max_share * n:
            how = ("although their media exist (a failed extraction? see the extraction's failures)"
                   if data.absent is not None else "and the data declares no absent media (Stage2Data.absent)")
            raise ValueError(f"{split}: {len(bad)} of {n} clips ({len(bad) / n:.1%}) have no {m} features {how}, "
                             f"more than max_missing_share={max_share:g}: {bad[:10]}"
                             + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
                             + "; re-extract them, fix their media, or raise Stage2Config.max_missing_share")


class Stage2Dataset(torch.utils.data.Dataset):
    """Indexable clips as tensors (subsampled once, here); ``collate`` pads them into a batch.

    Args: ``data``; ``dims`` {stream: D} of the model (a stream every clip lacks still needs its D);
    ``max_len`` / ``max_len_audio`` (module docstring); ``use_text``; ``prior_columns``
    {stream: [column, ...]} read from ``data.priors`` (None: no priors in the batch).
    """

    def __init__(self, data: Stage2Data, dims: Mapping[str, int], max_len: int | None = None,
                 max_len_audio: int | None = None, use_text: bool = False,
                 prior_columns: Mapping[str, Sequence[str]] | None = None):
        from emi_lib.features.quality import priors_to_tensors

        self.data = data
        self.ids = list(data.ids)
        self.dims = dict(dims)
        self.use_text = use_text
        found = data.dims()
        for m in ("vision", "audio") + (("text",) if use_text else ()):
            if found[m] is not None and found[m] != self.dims[m]:
                raise ValueError(f"{m} features have D={found[m]} but the model expects {self.dims[m]}")
        lens = {"vision": max_len, "audio": max_len if max_len_audio is None else max_len_audio}
        self.seqs: dict[str, list[torch.Tensor]] = {}
        for m in ("vision", "audio"):
            src = getattr(data, m)
            if _is_lazy(src):  # read per batch in collate: memory stays bounded
                self.seqs[m] = _LazySeqs(src, self.ids, self.dims[m], lens[m])
                continue
            out = []
            for cid in self.ids:
                a = np.asarray(src.get(cid, np.zeros((0, self.dims[m]))), dtype=np.float32)
                if a.size and (a.ndim != 2 or a.shape[1] != self.dims[m]):
                    raise ValueError(f"{m} features of clip {cid} have shape {a.shape}, expected (T, {self.dims[m]})")
                a = a if a.size else np.zeros((0, self.dims[m]), np.float32)
                out.append(torch.from_numpy(np.ascontiguousarray(a[subsample_steps(len(a), lens[m])])))
            self.seqs[m] = out
        self.text = None
        if use_text:
            src = data.text or {}
            self.text = torch.zeros(len(self.ids), self.dims["text"])
            self.text_mask = torch.zeros(len(self.ids), dtype=torch.bool)
            for i, cid in enumerate(self.ids):
                if data.has("text", cid):
                    t = np.asarray(src[cid], dtype=np.float32).reshape(-1)
                    if t.size != self.dims["text"]:
                        raise ValueError(f"text vector of clip {cid} has {t.size} values, expected {self.dims['text']}")
                    self.text[i] = torch.from_numpy(t)
                    self.text_mask[i] = True
        self.priors = None
        if prior_columns:
            if data.priors is None:
                raise ValueError("the model uses signal priors but this split has none: pass priors= "
                                 "(emi_lib.features.quality.compute_priors) or set use_priors=False")
            self.priors = priors_to_tensors(data.priors, self.ids, prior_columns)
        self.labels = None
        if data.labels is not None:
            self.labels = torch.tensor(data.labels.loc[self.ids, list(EMOTIONS)].to_numpy(np.float32))

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        """(n, 2) vision and audio steps per clip after subsampling (the key of length bucketing)."""
        if getattr(self, "_lengths", None) is None:
            self._lengths = np.stack([self.seqs[m].lengths() if isinstance(self.seqs[m], _LazySeqs)
                                      else np.array([len(s) for s in self.seqs[m]], dtype=np.int64)
                                      for m in ("vision", "audio")], axis=1)
        return self._lengths

    def __getitem__(self, i: int) -> int:
        return i  # collate gathers from the preprocessed tensors

    def collate(self, idx: Sequence[int]) -> dict:
        """Batch dict for ``EMIModel.forward`` plus ``ids`` and (if labelled) ``labels`` (B, 6)."""
        idx = [int(i) for i in idx]
        batch: dict = {"ids": [self.ids[i] for i in idx], "available": {}}
        for m in ("vision", "audio"):
            if isinstance(self.seqs[m], _LazySeqs):
                self.seqs[m].prefetch(idx)
            x, mask = pad_batch([self.seqs[m][i] for i in idx], dim=self.dims[m])  # a NaN row: a masked step
            batch[m], batch[f"{m}_mask"], batch["available"][m] = x, mask, mask.any(1)
        if self.text is not None:
            batch["text"], batch["text_mask"] = self.text[idx], self.text_mask[idx]
            batch["available"]["text"] = batch["text_mask"]
        if self.priors is not None:
            batch["priors"] = {m: p[idx] for m, p in self.priors.items()}
        if self.labels is not None:
            batch["labels"] = self.labels[idx]
        return batch


class _LazySeqs(Sequence):
    """``Stage2Dataset.seqs[m]`` over a lazy store: item i reads clip ``ids[i]`` (subsampled) on demand."""

    def __init__(self, src, ids: list, dim: int, max_len: int | None):
        if any(src.length(i) for i in ids if i in src) and src.dim != dim:
            raise ValueError(f"{src!r} has D={src.dim} but the model expects {dim}")
        self.src, self.ids, self.dim, self.max_len = src, ids, dim, max_len

    def __len__(self) -> int:
        return len(self.ids)

    def lengths(self) -> np.ndarray:
        steps = np.array([self.src.length(i) if i in self.src else 0 for i in self.ids], dtype=np.int64)
        return steps if self.max_len is None else np.minimum(steps, self.max_len)

    def prefetch(self, idx) -> None:
        if hasattr(self.src, "prefetch"):
            self.src.prefetch([self.ids[i] for i in idx if self.ids[i] in self.src])

    def __getitem__(self, i: int) -> torch.Tensor:
        cid = self.ids[i]
        if cid not in self.src or not self.src.length(cid):
            return torch.zeros(0, self.dim)
        a = self.src[cid]
        return torch.from_numpy(np.ascontiguousarray(a[subsample_steps(len(a), self.max_len)], dtype=np.float32))


def to_device(batch: dict, device) -> dict:
    """Move every tensor of a (nested) batch dict to ``device``; other values pass through."""
    if isinstance(batch, dict):
        return {k: to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, drop_last: bool = True,
                  lengths=None) -> list[list[int]]:
    """The epoch's training batches: a permutation from ``epoch_generator(seed, epoch)`` cut into
    ``batch_size`` chunks (:func:`~emi_lib.train.buckets.random_batches`). ``drop_last`` drops a final incomplete batch (a tiny batch gives a noisy
    Pearson term), unless it is the only batch. With ``lengths`` ((n,) or (n, k) steps per clip,
    e.g. ``Stage2Dataset.lengths()``) the batches are length-bucketed
    (:func:`emi_lib.train.buckets.bucketed_batches`, same count of batches)."""
    if lengths is not None:
        if len(lengths) != n:
            raise ValueError(f"lengths has {len(lengths)} rows for {n} clips")
        return bucketed_batches(lengths, batch_size, seed, epoch, drop_last)
    batches = random_batches(n, batch_size, seed, epoch)
    return drop_incomplete(batches, batch_size) if drop_last else batches


def eval_batches(n: int, batch_size: int) -> list[list[int]]:
    """Contiguous batches over all n clips; the last may be smaller (never dropped)."""
    return [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
