"""Extraction of per-clip features from a data root into a :class:`FeatureStore`.

>>> from emi_lib.features.extract import extract_split, extract_all
>>> rep = extract_split(root, "train", store, "vision", "openclip-tiny")   # doctest: +SKIP
>>> print(rep.summary())                                                    # doctest: +SKIP

What one clip becomes (float32 ``(T, D)`` under ``<store>/<modality>/<key>/<split>/<id>.npy``):

- ``vision``: one row per face crop (``face_images/{id}/``, ``vision_source="faces"``) or per
  decoded mp4 frame (``vision_source="video"``), through ``encode_frames``. The choice is
  explicit: a clip without face crops is a *missing* vision modality (nothing written,
  listed in the report), never silently replaced by video frames. A crop that cannot be decoded
  costs that step only: its row is NaN (a masked step, :func:`~emi_lib.features.store.valid_steps`),
  the clip's other crops are encoded, and the file is listed under ``report.unreadable_frames``; a
  clip whose crops are *all* unreadable is a failed clip.
- ``audio``: the 16 kHz mono wave through ``encode_audio``: ``T = frame_rate * seconds``
  (100/s for ``logmel``, 50/s for wav2vec2). A clip without an audio file is missing.
- ``text``: one L2-normalised row ``(1, D)`` per clip: the transcript (an empty transcript is a
  silent clip, valid: the embedding of ``""``; a missing transcript file is listed as missing),
  or with ``text_source="label_prompt"`` the label prompt of :func:`emi_lib.features.text.label_prompt`
  (splits with labels only; refused for test. Label prompts of *valid* clips are for retrieval
  evaluation of stage 1 only, never a model input: they are the label written as text).
- backbone ``"official"`` (vision and audio): the release's pre-extracted ``vit/`` / ``wav2vec2/``
  files, read by the safe loader :func:`emi_lib.data.load_features` (a pickle that references
  anything but arrays is refused, kind ``unsafe``, and listed) and copied into the store, so that
  downstream code reads every backbone the same way. D is whatever the files hold; a clip whose
  D differs from the split's is a failure (kind ``dim``).

Long face sequences (real clips reach 2,591 frames): ``frame_stride=s`` keeps every s-th frame;
``max_frames=M`` keeps at most M frames *spread over the whole clip* by enlarging the clip's
stride to ``s' = max(s, ceil(n / M))`` (constant step, so the time axis stays regular for a
TCN; the clips whose stride was enlarged are listed in ``_meta.json`` under ``strides``).
For video, n comes from the container header; when the header has no frame count the first M
strided frames are kept. The same subsampling applies to ``official`` vision rows.

Keys: features are stored under :func:`store_backbone` -- the backbone name itself for the
default inputs (faces, transcript, all frames), else the name plus the non-default input
settings, e.g. ``openclip-tiny[video,max=64]``, ``openclip-tiny[size=112]`` or
``minilm[label_prompt]`` -- hashed into a
folder by :func:`emi_lib.features.store.backbone_key`. Two backbones, or one backbone on two
inputs, never share a folder; a folder whose stored D differs from the encoder's is refused.

Batching: frames of up to ``batch_clips`` clips (and at most ``max_batch_frames`` frames) go
through the vision encoder in one call, grouped by crop size; texts of ``batch_clips`` clips in
one call. Audio is encoded clip by clip: padding clips to a common length would change the
outputs (wav2vec2 base has no attention mask and normalises over time). Loading (jpeg/mp3
decoding) runs ``workers`` clips ahead in a thread while the encoder works.

Resume: clips already in the store (:meth:`FeatureStore.done_ids`) are skipped, so a killed run
continues where it stopped. :meth:`FeatureStore.write` is atomic (``<id>.npy.tmp`` then rename),
so a half-written clip is never read as complete; a leftover ``.tmp`` is ignored by readers,
overwritten when its clip is redone, and removed at the start of a run if older than
``STALE_TMP_S`` (a fresh one may belong to a concurrent run; run one extraction per folder).

At the end each run writes ``<store>/<modality>/<key>/<split>/_meta.json``: backbone, key, dim,
frame rate, settings, number of clips in the split / stored / missing / failed, the missing
and failed ids with their reasons and the clips stored with unreadable frames. **Failures are loud**
(:mod:`emi_lib.features.extract_report`): a *missing* modality (no media) is legitimate, but a *failed*
clip (media that exist but gave no features) or an unreadable frame is printed on stderr at the end of
the run, one line naming the clips, whatever ``progress`` / ``verbose`` say, and returned in
``report.failures`` / ``extract_all(...).failures`` (JSON-able, for a notebook's ``record``). A clip
stored earlier with masked frames stays listed on later runs (read back from ``_meta.json``). CLI::

    python -m emi_lib.features.extract ROOT --store DIR --vision openclip-tiny --audio logmel \\
        --text minilm [--splits train valid] [--max-frames 256] ...

Several processes (``torchrun --nproc_per_node N -m emi_lib.features.extract ...``, see
``docs/distributed.md``): when a ``torch.distributed`` group of more than one process is initialised,
:func:`extract_split` takes only this rank's clips, ``wanted[rank::world]`` of the split's (or
``ids``') clip list, so every clip is computed by exactly one rank (per-clip writes are atomic and
never shared). Each rank loads its own encoder (GPU ``LOCAL_RANK`` under nccl with ``--device cuda``).
After its clips every rank all-gathers its part of the report (computed, already stored, missing,
failed, strides); every rank returns the same merged report and rank 0 alone writes ``_meta.json``,
followed by a barrier. With ``on_error="raise"`` a failing rank raises and torchrun stops the job.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextlib import closing
from pathlib import Path

import numpy as np

from emi_lib.constants import clip_stem
from emi_lib.data import DataError, DataRoot
from emi_lib.data.layout import ABSENT_KINDS
from emi_lib.features.extract_report import ExtractionReport, ExtractionReports, recorded_failures
from emi_lib.features.extract_sources import (
    OFFICIAL,
    OFFICIAL_FOLDERS,
    AudioSource,
    OfficialSource,
    Source,
    TextSource,
    VisionSource,
    clip_stride,
    prefetch,
)
from emi_lib.features.store import META_NAME, FeatureStore, backbone_key, split_composite

log = logging.getLogger(__name__)

__all__ = ["META_NAME", "OFFICIAL", "OFFICIAL_FOLDERS", "VISION_SOURCES", "ExtractionReport", "ExtractionReports",
           "clip_stride", "extract_all", "extract_split", "read_meta", "recorded_failures", "store_backbone"]

VISION_SOURCES: tuple[str, ...] = ("faces", "video")
#: the keyword arguments of extract_split that are part of the store name (:func:`store_backbone`)
_NAME_OPTIONS = ("vision_source", "text_source", "max_frames", "frame_stride", "face_size")
#: A leftover ``<id>.npy.tmp`` older than this (seconds) is removed at the start of a run.
STALE_TMP_S: float = 60.0


def store_backbone(modality: str, backbone: str, *, vision_source: str = "faces", text_source: str = "transcript",
                   max_frames: int | None = None, frame_stride: int = 1, face_size=None) -> str:
    """The name features are stored under: ``backbone`` for default inputs, else
    ``backbone[opt,...]`` with the non-default input settings (see the module docstring). A
    concatenation ``a+b`` is stored as its parts: ``a[opts]+b[opts]``."""
    parts = split_composite(backbone)
    if len(parts) > 1:
        return "+".join(store_backbone(modality, p, vision_source=vision_source, text_source=text_source,
                                       max_frames=max_frames, frame_stride=frame_stride, face_size=face_size)
                        for p in parts)
    opts: list[str] = []
    if modality == "vision":
        if backbone != OFFICIAL and vision_source != "faces":
            opts.append(vision_source)
        if frame_stride != 1:
            opts.append(f"stride={frame_stride}")
        if max_frames is not None:
            opts.append(f"max={max_frames}")
        if face_size is not None and backbone != OFFICIAL:
            hw = face_size if isinstance(face_size, tuple | list) else (face_size,)
            opts.append("size=" + "x".join(str(int(v)) for v in hw))
    elif modality == "text" and text_source != "transcript":
        opts.append(text_source)
    return f"{backbone}[{','.join(opts)}]" if opts else backbone


# ---------------------------------------------------------------------------------- extraction
def _stored_dim(folder: Path) -> int | None:
    for p in sorted(folder.glob("*.npy")) if folder.exists() else []:
        try:
            return int(np.load(p, mmap_mode="r", allow_pickle=False).shape[1])
        except Exception:  # an unreadable stored file: the next one decides
            continue
    return None


def _clean_stale_tmp(folder: Path) -> int:
    n = 0
    for p in folder.glob("*.npy.tmp") if folder.exists() else []:
        try:
            if time.time() - p.stat().st_mtime > STALE_TMP_S:
                p.unlink()
                n += 1
        except FileNotFoundError:
            pass
    return n


def _write_meta(folder: Path, rep: ExtractionReport, settings: dict, attempted: set[str], stored: set[str],
                split_ids: list[str]) -> Path:
    path = folder / META_NAME
    prev = {}
    if path.exists():
        try:
            prev = json.loads(path.read_text())
        except ValueError:
            prev = {}
    keep = lambda d: {c: v for c, v in d.items() if c not in attempted and c not in stored}  # noqa: E731
    missing = keep(prev.get("missing", {})) | {cid: msg for cid, _, msg in rep.issues.missing}
    failed = keep(prev.get("failed", {})) | {cid: {"kind": k, "message": m} for cid, k, m in rep.issues.skipped}
    strides = {c: s for c, s in prev.get("strides", {}).items() if c in stored and c not in attempted}
    strides |= {c: s for c, s in rep.strides.items() if c in stored}
    frames = {c: v for c, v in prev.get("unreadable_frames", {}).items() if c in stored and c not in attempted}
    frames |= {c: v for c, v in rep.unreadable_frames.items() if c in stored}
    n_stored = len(stored & set(split_ids))
    meta = {
        "modality": rep.modality, "backbone": rep.backbone, "store_backbone": rep.store_backbone,
        "backbone_key": backbone_key(rep.store_backbone), "split": rep.split, "dim": rep.dim,
        "frame_rate": rep.frame_rate, "time_axis": settings.pop("time_axis"), "settings": settings,
        "n_clips": len(split_ids), "n_stored": n_stored, "n_missing": len(missing), "n_failed": len(failed),
        "complete": n_stored + len(missing) == len(split_ids) and not failed,
        "missing": dict(sorted(missing.items())), "failed": dict(sorted(failed.items())),
        "strides": dict(sorted(strides.items())),
        "n_unreadable_frames": sum(len(v) for v in frames.values()), "unreadable_frames": dict(sorted(frames.items())),
        "last_run": {"computed": rep.n_done, "already_stored": rep.n_existing, "seconds": round(rep.seconds, 3),
                     "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")},
    }
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / (META_NAME + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
    return path


def extract_split(
    root, split: str, store, modality: str, backbone: str, *,
    vision_source: str = "faces", text_source: str = "transcript", max_frames: int | None = None,
    frame_stride: int = 1, face_size=None, ids=None, batch_clips: int = 8, max_batch_frames: int = 2048,
    workers: int = 1, progress: bool = True, on_error: str = "skip", device: str = "cpu", encoder=None,
    reuse_from: tuple | None = None,
) -> ExtractionReport:
    """Extract ``modality`` features of every clip of ``split`` (or ``ids``) with ``backbone``
    into ``store`` (a :class:`FeatureStore` or its folder), skipping clips already stored.

    ``root``: a data root path or :class:`DataRoot`. ``encoder``: an already loaded encoder
    (its ``.name`` must equal ``backbone``), else :func:`emi_lib.features.load_backbone` is called
    (only if some clip is left to do). ``face_size`` resizes crops/frames before the encoder
    (default: none; crops of one clip must then share a size). ``on_error``: ``"skip"`` lists a
    failed clip (corrupt/unsafe file, non-finite features) in the report and goes on; ``"raise"``
    raises its :class:`DataError`. A missing modality is never an error, always listed.
    ``reuse_from=(root, store)``: copy the features of clips whose media are byte-identical in that root
    and stored there (:mod:`emi_lib.features.reuse`; listed in ``report.reused``) instead of encoding them.
    Raises ``ValueError`` for bad arguments, a label prompt on test, or a store folder whose
    features have another D than the encoder's; :class:`DataError` when ``official`` features
    are asked for a root without ``vit/`` / ``wav2vec2/``.
    """
    from tqdm.auto import tqdm

    if modality not in ("vision", "audio", "text"):
        raise ValueError(f"modality must be 'vision', 'audio' or 'text', got {modality!r}")
    if vision_source not in VISION_SOURCES:
        raise ValueError(f"vision_source must be one of {VISION_SOURCES}, got {vision_source!r}")
    if text_source not in ("transcript", "label_prompt"):
        raise ValueError(f"text_source must be 'transcript' or 'label_prompt', got {text_source!r}")
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    if frame_stride < 1 or batch_clips < 1 or (max_frames is not None and max_frames < 1):
        raise ValueError("frame_stride, batch_clips and max_frames must be >= 1")
    if backbone == OFFICIAL and modality == "text":
        raise ValueError("backbone 'official' exists for vision (vit/) and audio (wav2vec2/) only")
    if modality == "text" and text_source == "label_prompt" and split == "test":
        raise ValueError("text_source='label_prompt' builds text from the labels: refused for the test split "
                         "(no labels); use 'transcript'")
    if encoder is not None and getattr(encoder, "name", backbone) != backbone:
        raise ValueError(f"encoder is {encoder.name!r} but backbone is {backbone!r}: the store key must name it")
    dr = root if isinstance(root, DataRoot) else DataRoot(root)
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    store.bind(dr.root)  # features of another root (or of this one before it was regenerated) raise
    name = store_backbone(modality, backbone, vision_source=vision_source, text_source=text_source,
                          max_frames=max_frames, frame_stride=frame_stride, face_size=face_size)
    parts = split_composite(backbone)
    if len(parts) > 1:  # a concatenation: extract (or reuse) each part, the store joins them on read
        encoders = getattr(encoder, "parts", None) or [None] * len(parts)
        reps = [extract_split(dr, split, store, modality, p, vision_source=vision_source, text_source=text_source,
                              max_frames=max_frames, frame_stride=frame_stride, face_size=face_size, ids=ids,
                              batch_clips=batch_clips, max_batch_frames=max_batch_frames, workers=workers,
                              progress=progress, on_error=on_error, device=device, encoder=e,
                              reuse_from=reuse_from)
                for p, e in zip(parts, encoders)]
        return _merge_parts(backbone, name, reps)
    split_ids = dr.ids(split)
    wanted = split_ids if ids is None else list(dict.fromkeys(clip_stem(i) for i in ids))
    unknown = sorted(set(wanted) - set(split_ids))
    if unknown:
        raise ValueError(f"ids not in split {split}: {unknown[:5]}")
    folder = store.folder(modality, name, split)
    from emi_lib.distributed import rank_world, shard_ids  # here: importing the module needs no torch

    rank, world = rank_world()
    all_wanted, wanted = wanted, shard_ids(wanted, rank, world)  # this rank's clips (all of them in one process)
    rep = ExtractionReport(split, modality, backbone, name, folder, n_clips=len(wanted))
    rep.cleaned_tmp = _clean_stale_tmp(folder) if rank == 0 else 0
    done = store.done_ids(modality, name, split)
    rep.existing = [c for c in wanted if c in done]
    todo = [c for c in wanted if c not in done]
    if rep.existing and (folder / META_NAME).exists():  # stored earlier with masked frames: still reported
        earlier = json.loads((folder / META_NAME).read_text()).get("unreadable_frames", {})
        rep.unreadable_frames = {c: list(earlier[c]) for c in rep.existing if c in earlier}
    if modality in ("vision", "audio") and backbone != OFFICIAL and todo:  # absent media: missing, no encoder needed
        present = []
        for cid in todo:
            err = absent_media(dr, split, cid, modality, vision_source)
            if err is None:
                present.append(cid)
            else:
                rep.issues.add_missing(cid, modality, err)
        todo = present
    if reuse_from is not None and todo:
        from emi_lib.features.reuse import reuse_features

        rep.reused = reuse_features(dr, split, store, modality, name, todo, *reuse_from, vision_source=vision_source)
        todo = [c for c in todo if c not in set(rep.reused)]
    rep.dim = stored_dim = _stored_dim(folder)
    settings = {"max_frames": max_frames, "frame_stride": frame_stride} if modality == "vision" else {}
    if modality == "vision" and backbone != OFFICIAL:
        settings |= {"vision_source": vision_source, "face_size": face_size}
    if modality == "text":
        settings["text_source"] = text_source

    t0 = time.perf_counter()
    source = Source()
    if todo and backbone == OFFICIAL:
        source = OfficialSource(dr, split, modality, frame_stride, max_frames, rep.strides)
    elif todo:
        if encoder is None:
            from emi_lib.features import load_backbone

            encoder = load_backbone(modality, backbone, device)
        if modality == "vision":
            source = VisionSource(dr, split, encoder, vision_source, frame_stride, max_frames, face_size,
                                   max_batch_frames, rep.strides, rep.unreadable_frames)
        elif modality == "audio":
            source = AudioSource(dr, split, encoder)
        else:
            source = TextSource(dr, split, encoder, text_source)
        rep.dim = source.dim
    enc_dim = getattr(encoder, "dim", None)
    if stored_dim is not None and enc_dim is not None and int(enc_dim) != stored_dim:
        raise ValueError(f"{folder} holds D={stored_dim} features but {backbone!r} gives D={enc_dim}: "
                         "a different model under the same name; use a new store or backbone name")
    rep.frame_rate = source.frame_rate

    def fail(cid: str, err: DataError) -> None:
        rep.unreadable_frames.pop(cid, None)  # nothing is stored for it: the clip's failure says it all
        if err.kind in ABSENT_KINDS:
            rep.issues.add_missing(cid, modality, err)
            return
        if on_error == "raise":
            raise err
        log.warning("%s/%s %s: clip %s failed: %s", modality, name, split, cid, err)
        rep.issues.add(cid, err)

    pending: list[tuple[str, object]] = []

    def flush() -> None:
        feats = source.encode([p for _, p in pending]) if pending else []
        for (cid, _), arr in zip(pending, feats):
            arr = np.asarray(arr, dtype=np.float32)
            if rep.dim is None:
                rep.dim = int(arr.shape[1])
            if arr.ndim != 2 or arr.shape[1] != rep.dim:
                fail(cid, DataError(None, f"clip {cid}: features {arr.shape} do not have the split's D={rep.dim}",
                                    kind="dim"))
                continue
            try:
                store.write(modality, name, split, cid, arr)
            except ValueError as err:  # non-finite features
                fail(cid, DataError(store.path(modality, name, split, cid), str(err), kind="nonfinite"))
                continue
            rep.computed.append(cid)
        bar.update(len(pending))
        pending.clear()

    size = 0
    with tqdm(total=len(todo), desc=f"{modality} {name} {split}", disable=not progress, leave=False) as bar, \
            closing(prefetch(source.load, todo, workers)) as loaded:  # closing: stop the loader on a crash
        for cid, got in loaded:
            if isinstance(got, DataError):
                fail(cid, got)
                bar.update(1)
                continue
            pending.append((cid, got))
            size += source.size(got)
            if len(pending) >= batch_clips or size >= source.max_batch:
                flush()
                size = 0
        flush()
    rep.seconds = time.perf_counter() - t0
    settings["time_axis"] = source.time_axis if todo else ""
    if world > 1:
        rep, todo, settings["time_axis"] = _merge_ranks(rep, todo, settings["time_axis"], all_wanted)
    if not todo and (folder / META_NAME).exists():  # nothing ran: keep what the last run recorded
        prev = json.loads((folder / META_NAME).read_text())
        rep.frame_rate, settings["time_axis"] = prev.get("frame_rate"), prev.get("time_axis", "")
    if rank == 0:
        _write_meta(folder, rep, settings, set(todo), store.done_ids(modality, name, split), split_ids)
        if rep.any_failure:  # printed whatever progress / verbose say: a failure is never only in a report
            print(rep.failure_line(), file=sys.stderr, flush=True)
    if world > 1:
        from emi_lib.distributed import barrier

        barrier()  # _meta.json is written before any rank returns
    return rep


def absent_media(dr: DataRoot, split: str, cid: str, modality: str, vision_source: str = "faces") -> DataError | None:
    """The :class:`DataError` (kind ``missing`` / ``empty``) when a clip has no media for ``modality``, else
    None (checked without decoding: such a clip is listed as missing without loading any encoder)."""
    from emi_lib.data.media import face_files

    if modality == "text":
        return None
    if modality == "vision" and vision_source == "faces":
        try:
            face_files(dr.face_dir(split, cid))
        except DataError as err:
            return err if err.kind in ABSENT_KINDS else None
        return None
    p = dr.video_path(split, cid) if modality == "vision" else dr.audio_path(split, cid)
    return None if p.exists() else DataError(p, "file does not exist", kind="missing")


def _merge_parts(backbone: str, name: str, reps: list[ExtractionReport]) -> ExtractionReport:
    """One report for a concatenation from its parts' reports: a clip is stored when every part stored
    it, missing or failed when any part is."""
    first = reps[0]
    out = ExtractionReport(first.split, first.modality, backbone, name, first.folder, n_clips=first.n_clips,
                           strides=dict(first.strides), frame_rate=first.frame_rate,
                           seconds=sum(r.seconds for r in reps), cleaned_tmp=sum(r.cleaned_tmp for r in reps))
    for r in reps:  # every part reads the same crops: the same unreadable ones
        for c, v in r.unreadable_frames.items():
            out.unreadable_frames.setdefault(c, list(v))
    out.dim = sum(r.dim for r in reps) if all(r.dim for r in reps) else None
    stored = [set(r.computed) | set(r.existing) for r in reps]
    out.existing = [c for c in first.existing if all(c in r.existing for r in reps)]
    out.reused = [c for c in first.reused if all(c in r.reused or c in r.existing for r in reps)]
    out.computed = [c for c in dict.fromkeys(c for r in reps for c in r.computed) if all(c in s for s in stored)]
    seen_m, seen_f = set(), set()
    for r in reps:
        for row in r.issues.missing:
            if row[0] not in seen_m:
                seen_m.add(row[0])
                out.issues.missing.append(row)
        for row in r.issues.skipped:
            if row[0] not in seen_f:
                seen_f.add(row[0])
                out.issues.skipped.append(row)
    return out


def _merge_ranks(rep: ExtractionReport, todo: list[str], time_axis: str, wanted: list[str]):
    """Every rank's part of the run (all-gathered) merged into one report, in ``wanted`` order;
    returns ``(report, every rank's attempted clips, time axis)`` (the same on every rank)."""
    from emi_lib.distributed import all_gather_object

    parts = all_gather_object({"computed": rep.computed, "existing": rep.existing, "missing": rep.issues.missing,
                               "skipped": rep.issues.skipped, "strides": rep.strides, "dim": rep.dim,
                               "frame_rate": rep.frame_rate, "seconds": rep.seconds, "todo": todo,
                               "time_axis": time_axis, "cleaned_tmp": rep.cleaned_tmp,
                               "unreadable_frames": rep.unreadable_frames})
    pos = {c: i for i, c in enumerate(wanted)}
    first = lambda key: next((p[key] for p in parts if p[key] not in (None, "")), parts[0][key])  # noqa: E731
    out = ExtractionReport(rep.split, rep.modality, rep.backbone, rep.store_backbone, rep.folder, n_clips=len(wanted),
                           dim=first("dim"), frame_rate=first("frame_rate"), seconds=max(p["seconds"] for p in parts),
                           cleaned_tmp=sum(p["cleaned_tmp"] for p in parts))
    for p in parts:
        out.computed += p["computed"]
        out.existing += p["existing"]
        out.issues.missing += p["missing"]
        out.issues.skipped += p["skipped"]
        out.strides |= p["strides"]
        out.unreadable_frames |= p["unreadable_frames"]
    out.computed.sort(key=pos.get)
    out.existing.sort(key=pos.get)
    out.issues.missing.sort(key=lambda r: pos.get(r[0], -1))
    out.issues.skipped.sort(key=lambda r: pos.get(r[0], -1))
    todo_all = sorted((c for p in parts for c in p["todo"]), key=pos.get)
    return out, todo_all, first("time_axis")


def read_meta(store, modality: str, backbone: str, split: str) -> dict:
    """The ``_meta.json`` of a split (``backbone``: the store name, see :func:`store_backbone`)."""
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    path = store.folder(modality, backbone, split) / META_NAME
    if not path.exists():
        raise DataError(path, f"no extraction metadata for {modality}/{backbone}/{split}", kind="missing")
    return json.loads(path.read_text())


def extract_all(root, store, vision_backbone: str | None = None, audio_backbone: str | None = None,
                text_backbone: str | None = None, splits=None, *, device: str = "cpu", verbose: bool = False,
                **kwargs) -> ExtractionReports:
    """:func:`extract_split` for every given backbone and split (default: the splits whose CSV
    exists), loading each encoder once. Returns :class:`ExtractionReports`, a dict
    ``{"<modality>/<split>": report}`` whose ``failures`` gathers the failed clips and the clips with
    unreadable frames (JSON-able, for a notebook's ``record``); ``kwargs`` go to :func:`extract_split`
    (``vision_source``, ``text_source``, ``max_frames``, ...). ``verbose`` prints each report's summary as
    soon as its split is done; failures are printed in any case (one line per split, by extract_split)."""
    dr = root if isinstance(root, DataRoot) else DataRoot(root)
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    store.bind(dr.root)
    splits = dr.available_splits() if splits is None else list(splits)
    if text_backbone and kwargs.get("text_source") == "label_prompt" and "test" in splits:
        raise ValueError("text_source='label_prompt' is refused for the test split; drop 'test' from splits")
    reports = ExtractionReports()
    for modality, backbone in (("vision", vision_backbone), ("audio", audio_backbone), ("text", text_backbone)):
        if not backbone:
            continue
        encoder = None
        name = store_backbone(modality, backbone, **{k: v for k, v in kwargs.items() if k in _NAME_OPTIONS})
        vs = kwargs.get("vision_source", "faces")
        todo = any(absent_media(dr, s, c, modality, vs) is None
                   for s in splits for c in set(dr.ids(s)) - store.done_ids(modality, name, s))
        if backbone != OFFICIAL and todo:  # loaded once, and only when a clip is left to encode
            from emi_lib.features import load_backbone

            encoder = load_backbone(modality, backbone, device)
        for split in splits:
            rep = extract_split(dr, split, store, modality, backbone, device=device, encoder=encoder, **kwargs)
            reports[f"{modality}/{split}"] = rep
            if verbose:
                print(rep.summary(), flush=True)
    return reports


if __name__ == "__main__":  # the command line lives in emi_lib.features.extract_cli (run, not imported: no cycle)
    import runpy

    runpy.run_module("emi_lib.features.extract_cli", run_name="__main__", alter_sys=True)
