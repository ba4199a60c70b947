"""The phases of one split's extraction, for :func:`emi_lib.features.extract.extract_split` (whose module
docstring describes the behaviour): check the arguments, plan (this rank's clips: already stored, media absent,
reused), open the source, encode and store the clips in batches, finish (merge the ranks, ``_meta.json``, the
failure line). :class:`SplitJob` carries what the phases share.
"""

from __future__ import annotations

import fcntl
import json
import logging
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from emi_lib.constants import clip_stem
from emi_lib.data import DataError, DataRoot
from emi_lib.data.layout import ABSENT_KINDS
from emi_lib.features.extract_report import ExtractionReport, merge_rank_reports, write_meta
from emi_lib.features.extract_sources import (
    OFFICIAL,
    AudioSource,
    OfficialSource,
    Source,
    TextSource,
    VisionSource,
    prefetch,
)
from emi_lib.features.store import META_NAME, FeatureStore

log = logging.getLogger("emi_lib.features.extract")

VISION_SOURCES: tuple[str, ...] = ("faces", "video")
#: A leftover ``<id>.npy.tmp`` older than this (seconds) is removed at the start of a run.
STALE_TMP_S: float = 60.0


def stored_dim(folder: Path) -> int | None:
    """D of the features already stored in ``folder`` (the first readable ``.npy``), None when there are none."""
    for p in sorted(folder.glob("*.npy")) if folder.exists() else []:
        try:
            return int(np.load(p, mmap_mode="r", allow_pickle=False).shape[1])
        except Exception:  # an unreadable stored file: the next one decides
            continue
    return None


#: the lock file of a split folder (:func:`split_lock`)
LOCK_NAME = ".extract.lock"


@contextmanager
def split_lock(folder: Path):
    """One extraction of a store folder at a time: two notebooks or grid runs that share a store (a cache
    folder, :func:`emi_lib.paths.cache_root`) and ask for the same split at once would encode every clip twice,
    and one could clean the other's files in flight. The second waits, then finds the first one's clips stored
    and skips them. Under torchrun the ranks share a folder's work (each encodes its shard, barriers order
    them), so they take no lock."""
    from emi_lib.distributed import rank_world  # here: importing the module needs no torch

    if rank_world()[1] > 1:
        yield
        return
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_NAME, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def clean_stale_tmp(folder: Path) -> int:
    """Remove the ``<id>.npy.tmp`` files older than :data:`STALE_TMP_S` (a killed run's); returns how many."""
    n = 0
    for p in folder.glob("*.npy.tmp") if folder.exists() else []:
        try:
            if time.time() - p.stat().st_mtime > STALE_TMP_S:
                p.unlink()
                n += 1
        except FileNotFoundError:
            pass
    return n


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


@dataclass
class SplitJob:
    """One split's extraction (one modality, one backbone that is not a concatenation): the call's arguments
    and what :func:`_plan` found to do."""

    dr: DataRoot
    split: str
    store: FeatureStore
    modality: str
    backbone: str
    name: str  # the store name (store_backbone)
    opts: dict  # the keyword arguments of extract_split that shape the inputs and the batches
    split_ids: list = field(default_factory=list)
    all_wanted: list = field(default_factory=list)  # every rank's clips, in order
    rank: int = 0
    world: int = 1
    rep: ExtractionReport | None = None
    todo: list = field(default_factory=list)  # this rank's clips left to encode

    @property
    def folder(self) -> Path:
        return self.store.folder(self.modality, self.name, self.split)


def check_arguments(split: str, modality: str, backbone: str, vision_source: str, text_source: str, on_error: str,
                     frame_stride: int, batch_clips: int, max_frames: int | None, encoder) -> None:
    """``ValueError`` for a bad argument of :func:`extract_split`."""
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


def plan_job(job: SplitJob, ids, reuse_from) -> None:
    """This rank's clips and what is already known of them: stored earlier (skipped, their masked frames still
    reported), media absent (missing, no encoder needed), or copied from a root with identical media."""
    from emi_lib.distributed import rank_world, shard_ids  # here: importing the module needs no torch

    dr, split, modality, backbone, name = job.dr, job.split, job.modality, job.backbone, job.name
    job.split_ids = dr.ids(split)
    wanted = job.split_ids if ids is None else list(dict.fromkeys(clip_stem(i) for i in ids))
    unknown = sorted(set(wanted) - set(job.split_ids))
    if unknown:
        raise ValueError(f"ids not in split {split}: {unknown[:5]}")
    job.rank, job.world = rank_world()
    job.all_wanted, wanted = wanted, shard_ids(wanted, job.rank, job.world)  # all of them in one process
    rep = job.rep = ExtractionReport(split, modality, backbone, name, job.folder, n_clips=len(wanted))
    rep.cleaned_tmp = clean_stale_tmp(job.folder) if job.rank == 0 else 0
    done = job.store.done_ids(modality, name, split)
    rep.existing = [c for c in wanted if c in done]
    todo = [c for c in wanted if c not in done]
    if rep.existing and (job.folder / META_NAME).exists():  # stored earlier with masked frames: still reported
        earlier = json.loads((job.folder / META_NAME).read_text()).get("unreadable_frames", {})
        rep.unreadable_frames = {c: list(earlier[c]) for c in rep.existing if c in earlier}
    if modality in ("vision", "audio") and backbone != OFFICIAL and todo:
        present = []
        for cid in todo:
            err = absent_media(dr, split, cid, modality, job.opts["vision_source"])
            if err is None:
                present.append(cid)
            else:
                rep.issues.add_missing(cid, modality, err)
        todo = present
    if reuse_from is not None and todo:
        from emi_lib.features.reuse import reuse_features

        rep.reused = reuse_features(dr, split, job.store, modality, name, todo, *reuse_from,
                                    vision_source=job.opts["vision_source"])
        todo = [c for c in todo if c not in set(rep.reused)]
    job.todo = todo


def input_settings(job: SplitJob) -> dict:
    """The input settings recorded in ``_meta.json`` (``time_axis`` is added at the end of the run)."""
    o = job.opts
    settings = {"max_frames": o["max_frames"], "frame_stride": o["frame_stride"]} if job.modality == "vision" else {}
    if job.modality == "vision" and job.backbone != OFFICIAL:
        settings |= {"vision_source": o["vision_source"], "face_size": o["face_size"]}
    if job.modality == "text":
        settings["text_source"] = o["text_source"]
    return settings


def open_source(job: SplitJob, encoder, device: str) -> Source:
    """The clips' loader and encoder (the backbone is loaded only when a clip is left to do); refuses a store
    folder whose features have another D than the encoder's."""
    o, rep = job.opts, job.rep
    rep.dim = d_stored = stored_dim(job.folder)
    source = Source()
    if job.todo and job.backbone == OFFICIAL:
        source = OfficialSource(job.dr, job.split, job.modality, o["frame_stride"], o["max_frames"], rep.strides)
    elif job.todo:
        if encoder is None:
            from emi_lib.features import load_backbone

            encoder = load_backbone(job.modality, job.backbone, device)
        if job.modality == "vision":
            source = VisionSource(job.dr, job.split, encoder, o["vision_source"], o["frame_stride"], o["max_frames"],
                                  o["face_size"], o["max_batch_frames"], rep.strides, rep.unreadable_frames)
        elif job.modality == "audio":
            source = AudioSource(job.dr, job.split, encoder)
        else:
            source = TextSource(job.dr, job.split, encoder, o["text_source"])
        rep.dim = source.dim
    enc_dim = getattr(encoder, "dim", None)
    if d_stored is not None and enc_dim is not None and int(enc_dim) != d_stored:
        raise ValueError(f"{job.folder} holds D={d_stored} features but {job.backbone!r} gives D={enc_dim}: "
                         "a different model under the same name; use a new store or backbone name")
    rep.frame_rate = source.frame_rate
    return source


def encode_clips(job: SplitJob, source: Source, on_error: str, batch_clips: int, workers: int, progress: bool) -> None:
    """Load the clips ``workers`` ahead, encode them in batches (``batch_clips`` clips, ``source.max_batch``
    frames) and store each; a failed clip is listed (``on_error="skip"``) or raised, an absent one is missing."""
    from tqdm.auto import tqdm

    rep, modality, name, split, store = job.rep, job.modality, job.name, job.split, job.store

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
    with tqdm(total=len(job.todo), desc=f"{modality} {name} {split}", disable=not progress, leave=False) as bar, \
            closing(prefetch(source.load, job.todo, workers)) as loaded:  # closing: stop the loader on a crash
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


def finish_job(job: SplitJob, settings: dict, time_axis: str) -> ExtractionReport:
    """Merge the ranks' reports (DDP), write ``_meta.json`` (rank 0) and print the failures, then a barrier."""
    rep, todo, folder = job.rep, job.todo, job.folder
    settings["time_axis"] = time_axis
    if job.world > 1:
        rep, todo, settings["time_axis"] = merge_rank_reports(rep, todo, settings["time_axis"], job.all_wanted)
    if not todo and (folder / META_NAME).exists():  # nothing ran: keep what the last run recorded
        prev = json.loads((folder / META_NAME).read_text())
        rep.frame_rate, settings["time_axis"] = prev.get("frame_rate"), prev.get("time_axis", "")
    if job.rank == 0:
        write_meta(folder, rep, settings, set(todo), job.store.done_ids(job.modality, job.name, job.split),
                   job.split_ids)
        if rep.any_failure:  # printed whatever progress / verbose say: a failure is never only in a report
            print(rep.failure_line(), file=sys.stderr, flush=True)
    if job.world > 1:
        from emi_lib.distributed import barrier

        barrier()  # _meta.json is written before any rank returns
    return rep
