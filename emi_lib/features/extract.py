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
overwritten when its clip is redone, and removed at the start of a run if older than ``STALE_TMP_S``.
Two processes extracting the same split folder of a shared store take turns (a lock file per folder,
:func:`~emi_lib.features.extract_job.split_lock`): the second finds the first one's clips stored and skips them.

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

import time

from emi_lib.data import DataRoot
from emi_lib.features.extract_job import (
    VISION_SOURCES,
    SplitJob,
    absent_media,
    check_arguments,
    encode_clips,
    finish_job,
    input_settings,
    open_source,
    plan_job,
    split_lock,
)
from emi_lib.features.extract_report import (
    ExtractionReport,
    ExtractionReports,
    merge_part_reports,
    read_meta,
    recorded_failures,
)
from emi_lib.features.extract_sources import OFFICIAL, OFFICIAL_FOLDERS, clip_stride
from emi_lib.features.store import META_NAME, FeatureStore, split_composite

__all__ = ["META_NAME", "OFFICIAL", "OFFICIAL_FOLDERS", "VISION_SOURCES", "ExtractionReport", "ExtractionReports",
           "absent_media", "clip_stride", "extract_all", "extract_split", "parse_store_backbone", "read_meta",
           "recorded_failures", "store_backbone"]

#: the keyword arguments of extract_split that are part of the store name (:func:`store_backbone`)
_NAME_OPTIONS = ("vision_source", "text_source", "max_frames", "frame_stride", "face_size")


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


def parse_store_backbone(modality: str, key: str) -> tuple[str, dict]:
    """The inverse of :func:`store_backbone`: a store name -> ``(backbone, extraction settings)``, so that
    features can be extracted again under the same name on another root (``"openclip-tiny[max=8]"`` ->
    ``("openclip-tiny", {"max_frames": 8})``). Raises ``ValueError`` for a name :func:`store_backbone` does not
    write (the parts of a concatenation with different settings, an unknown option)."""
    parts = split_composite(key)
    if len(parts) > 1:
        parsed = [parse_store_backbone(modality, p) for p in parts]
        if any(kw != parsed[0][1] for _, kw in parsed):
            raise ValueError(f"{key!r}: the parts of a concatenated backbone have different extraction settings")
        backbone, kwargs = "+".join(b for b, _ in parsed), parsed[0][1]
    else:
        backbone, _, rest = key.partition("[")
        kwargs = {}
        for opt in rest.removesuffix("]").split(",") if rest else []:
            name, _, value = opt.partition("=")
            if modality == "vision" and name == "stride" and value:
                kwargs["frame_stride"] = int(value)
            elif modality == "vision" and name == "max" and value:
                kwargs["max_frames"] = int(value)
            elif modality == "vision" and name == "size" and value:
                hw = tuple(int(v) for v in value.split("x"))
                kwargs["face_size"] = hw[0] if len(hw) == 1 else hw
            elif modality == "vision" and not value:
                kwargs["vision_source"] = name
            elif modality == "text" and not value:
                kwargs["text_source"] = name
            else:
                raise ValueError(f"{key!r}: unknown {modality} extraction option {opt!r}")
    if store_backbone(modality, backbone, **kwargs) != key:
        raise ValueError(f"{key!r} is not a {modality} store name (read as {backbone!r} with {kwargs})")
    return backbone, kwargs


# ---------------------------------------------------------------------------------- extraction
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
    check_arguments(split, modality, backbone, vision_source, text_source, on_error, frame_stride, batch_clips,
                     max_frames, encoder)
    dr = root if isinstance(root, DataRoot) else DataRoot(root)
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    store.bind(dr.root)  # features of another root (or of this one before it was regenerated) raise
    opts = dict(vision_source=vision_source, text_source=text_source, max_frames=max_frames,
                frame_stride=frame_stride, face_size=face_size)
    name = store_backbone(modality, backbone, **opts)
    parts = split_composite(backbone)
    if len(parts) > 1:  # a concatenation: extract (or reuse) each part, the store joins them on read
        encoders = getattr(encoder, "parts", None) or [None] * len(parts)
        reps = [extract_split(dr, split, store, modality, p, **opts, ids=ids, batch_clips=batch_clips,
                              max_batch_frames=max_batch_frames, workers=workers, progress=progress,
                              on_error=on_error, device=device, encoder=e, reuse_from=reuse_from)
                for p, e in zip(parts, encoders)]
        return merge_part_reports(backbone, name, reps)
    job = SplitJob(dr, split, store, modality, backbone, name, {**opts, "max_batch_frames": max_batch_frames})
    with split_lock(job.folder):  # a concurrent extraction of this folder finishes first (then its clips are skipped)
        plan_job(job, ids, reuse_from)
        settings = input_settings(job)
        t0 = time.perf_counter()  # loading the backbone counts
        source = open_source(job, encoder, device)
        encode_clips(job, source, on_error, batch_clips, workers, progress)
        job.rep.seconds = time.perf_counter() - t0
        return finish_job(job, settings, source.time_axis if job.todo else "")


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
