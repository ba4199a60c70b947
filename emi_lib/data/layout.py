"""The Hume-Vidmimic2 layout: split CSVs and per-clip file paths under a data root.

::

    train_split.csv  valid_split.csv      Filename,Admiration,...,Joy
    raw/{id}.mp4  audio/{id}.mp3|.wav  face_images/{id}/{n}.jpg  text/{id}.txt
    vit/{id}.pkl  wav2vec2/{id}.pkl       (any other feature folder works the same)
    test_data/test_split.csv + the same folders for the test clips

``{id}`` is the integer ``Filename`` zero-padded to 5 digits (:func:`emi_lib.constants.clip_stem`).
"""

from __future__ import annotations

import csv
import math
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS, HEADER, SPLIT_CSV, clip_stem
from emi_lib.data.errors import DataError, SkipReport
from emi_lib.data.media import (
    FACE_EXTENSIONS,
    load_audio,
    load_face_crops,
    load_transcript,
    load_video_frames,
)
from emi_lib.data.safe_load import load_features

#: Modalities with a fixed folder; any other name is a feature folder (``vit``, ``wav2vec2``, ...).
MEDIA_FOLDERS: dict[str, str] = {"video": "raw", "audio": "audio", "faces": "face_images", "text": "text"}
#: Feature folders of the challenge release.
FEATURE_KINDS: tuple[str, ...] = ("vit", "wav2vec2")
#: Every modality :meth:`DataRoot.has` knows without being told.
MODALITIES: tuple[str, ...] = ("video", "audio", "faces", "text", *FEATURE_KINDS)
#: Extensions tried, in order, for audio and for feature files.
AUDIO_EXTENSIONS: tuple[str, ...] = (".mp3", ".wav")
FEATURE_EXTENSIONS: tuple[str, ...] = (".pkl", ".npy", ".pt", ".npz")
#: Error kinds that mean "this modality is absent" (a model must cope) rather than "corrupt".
ABSENT_KINDS: frozenset[str] = frozenset({"missing", "empty"})

_ID_RE = re.compile(r"^[0-9]+$")
_FOLDER_RE = re.compile(r"^[A-Za-z0-9_.-]+$")
_MAX_LISTED = 5


def _check_split(split: str) -> str:
    if split not in SPLIT_CSV:
        raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_CSV)}")
    return split


def read_split(root: str | os.PathLike, split: str) -> pd.DataFrame:
    """The split CSV as a DataFrame indexed by the 5-digit id (index name ``Filename``).

    train/valid: six float64 columns in :data:`EMOTIONS` order. test: no columns (a test CSV
    with the full header is accepted and its label columns, empty or not, are dropped).

    Validation, each failure a :class:`DataError` naming the CSV and the problem (row problems
    give the line number and the value; up to 5 are listed, with the total):

    - the file exists (kind ``missing``) and is not empty (``empty``: no header, or no rows);
    - the header is exactly the challenge's (kind ``header``): a UTF-8 BOM and whitespace around
      names are tolerated, nothing else, since a reordered or renamed column would silently
      attach labels to the wrong emotion;
    - every row has as many fields as the header (``row``);
    - ids are non-negative integers (``id``): "1.5" or "abc" cannot name a file;
    - labels are numbers (``value``), not NaN or empty (``nan``), within [0, 1] (``range``):
      intensities are averaged ratings on [0, 1]; anything else is a corrupted export;
    - no id appears twice (``duplicate``): a duplicate would be weighted twice in training and
      the Pearson score.
    """
    _check_split(split)
    path = Path(root) / SPLIT_CSV[split]
    if not path.exists():
        raise DataError(path, f"{split} split CSV does not exist", kind="missing")
    if path.stat().st_size == 0:
        raise DataError(path, "empty file (0 bytes), expected a header and rows", kind="empty")
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            rows = list(csv.reader(fh))
    except UnicodeDecodeError as err:
        raise DataError(path, f"not UTF-8 text ({err})", kind="encoding") from err
    except csv.Error as err:
        raise DataError(path, f"malformed CSV ({err})", kind="row") from err

    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(c.strip() for c in r)]
    if not numbered:
        raise DataError(path, "no header (file holds only blank lines)", kind="empty")
    _, header = numbered[0]
    found = tuple(c.strip() for c in header)
    label_cols = split != "test"
    allowed = [HEADER] if label_cols else [("Filename",), HEADER]
    if found not in allowed:
        expected = " or ".join(",".join(h) for h in allowed)
        raise DataError(path, f"wrong header: expected {expected!r}, found {','.join(found)!r}", kind="header")
    body = numbered[1:]
    if not body:
        raise DataError(path, "header but no rows", kind="empty")

    problems: list[tuple[str, str]] = []  # (kind, message)
    ids: list[str] = []
    values: list[list[float]] = []
    first_line: dict[str, int] = {}
    for line, row in body:
        if len(row) != len(header):
            problems.append(("row", f"line {line}: {len(row)} fields, header has {len(header)}"))
            continue
        raw_id = row[0].strip()
        if not _ID_RE.match(raw_id):
            problems.append(("id", f"line {line}: Filename {raw_id!r} is not a non-negative integer"))
            continue
        cid = clip_stem(int(raw_id))
        if cid in first_line:
            problems.append(("duplicate", f"line {line}: id {raw_id!r} duplicates line {first_line[cid]}"))
            continue
        first_line[cid] = line
        if label_cols:
            vals = []
            for name, cell in zip(EMOTIONS, row[1:]):
                s = cell.strip()
                try:
                    v = float(s)
                except ValueError:
                    kind = "nan" if s == "" else "value"
                    problems.append((kind, f"line {line}: {name} = {s!r} is not a number"))
                    break
                if math.isnan(v):
                    problems.append(("nan", f"line {line}: {name} is NaN"))
                    break
                if not 0.0 <= v <= 1.0:
                    problems.append(("range", f"line {line}: {name} = {s} is outside [0, 1]"))
                    break
                vals.append(v)
            else:
                values.append(vals)
                ids.append(cid)
        else:
            ids.append(cid)
    if problems:
        kinds = {k for k, _ in problems}
        listed = "; ".join(m for _, m in problems[:_MAX_LISTED])
        more = f" (and {len(problems) - _MAX_LISTED} more)" if len(problems) > _MAX_LISTED else ""
        raise DataError(path, f"{len(problems)} bad row(s): {listed}{more}",
                        kind=kinds.pop() if len(kinds) == 1 else "invalid")
    index = pd.Index(ids, name="Filename", dtype=object)
    if label_cols:
        return pd.DataFrame(np.asarray(values, dtype=np.float64).reshape(-1, len(EMOTIONS)),
                            index=index, columns=list(EMOTIONS))
    return pd.DataFrame(index=index)


class DataRoot:
    """A Hume-Vidmimic2 (or SynthMimic) data root: split tables, file paths and clip loading.

    ``cid`` arguments accept an int or a string id and are normalised to the 5-digit stem.
    Modalities: ``video`` (raw/*.mp4), ``audio`` (audio/*.mp3, else .wav), ``faces``
    (face_images/{id}/), ``text`` (text/*.txt); any other name is a feature folder
    (``vit``, ``wav2vec2``, ...) holding ``{id}.pkl`` (or .npy/.pt/.npz).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).expanduser()
        if not self.root.exists():
            raise DataError(self.root, "data root does not exist", kind="missing")
        if not self.root.is_dir():
            raise DataError(self.root, "data root is not a folder", kind="invalid")
        self._splits: dict[str, pd.DataFrame] = {}
        #: SkipReport of the latest :meth:`iter_clips` run (filled while it iterates).
        self.last_report: SkipReport | None = None

    def __repr__(self) -> str:
        return f"DataRoot({str(self.root)!r})"

    # -------------------------------------------------------------------------------- splits
    def split(self, name: str) -> pd.DataFrame:
        """:func:`read_split`, cached per root (a copy-free view: do not mutate it)."""
        if name not in self._splits:
            self._splits[name] = read_split(self.root, name)
        return self._splits[name]

    def ids(self, name: str) -> list[str]:
        return list(self.split(name).index)

    def available_splits(self) -> list[str]:
        """Splits whose CSV exists."""
        return [s for s, rel in SPLIT_CSV.items() if (self.root / rel).exists()]

    # --------------------------------------------------------------------------------- paths
    def clip_dir(self, split: str) -> Path:
        """Folder holding the clip files of a split: the root, or ``root/test_data`` for test."""
        return self.root / Path(SPLIT_CSV[_check_split(split)]).parent

    def video_path(self, split: str, cid) -> Path:
        return self.clip_dir(split) / "raw" / f"{clip_stem(cid)}.mp4"

    def audio_path(self, split: str, cid) -> Path:
        """``audio/{id}.mp3``; if that does not exist but ``.wav`` does, the wav; else the mp3 path."""
        base = self.clip_dir(split) / "audio" / clip_stem(cid)
        for ext in AUDIO_EXTENSIONS:
            p = base.with_suffix(ext)
            if p.exists():
                return p
        return base.with_suffix(AUDIO_EXTENSIONS[0])

    def face_dir(self, split: str, cid) -> Path:
        return self.clip_dir(split) / "face_images" / clip_stem(cid)

    def transcript_path(self, split: str, cid) -> Path:
        return self.clip_dir(split) / "text" / f"{clip_stem(cid)}.txt"

    def feature_path(self, split: str, cid, kind: str) -> Path:
        """``{kind}/{id}.pkl``; if absent, the first of .npy/.pt/.npz that exists; else the .pkl path."""
        if not _FOLDER_RE.match(kind) or kind in (".", ".."):
            raise ValueError(f"feature kind must be a plain folder name, got {kind!r}")
        base = self.clip_dir(split) / kind / clip_stem(cid)
        for ext in FEATURE_EXTENSIONS:
            p = base.with_suffix(ext)
            if p.exists():
                return p
        return base.with_suffix(FEATURE_EXTENSIONS[0])

    def path(self, split: str, cid, modality: str) -> Path:
        """The file (or face folder) of one modality of one clip."""
        if modality == "video":
            return self.video_path(split, cid)
        if modality == "audio":
            return self.audio_path(split, cid)
        if modality == "faces":
            return self.face_dir(split, cid)
        if modality == "text":
            return self.transcript_path(split, cid)
        return self.feature_path(split, cid, modality)

    def has(self, split: str, cid, modality: str) -> bool:
        """Whether the modality's file exists (faces: the folder holds at least one crop).
        Existence only: a zero-length or corrupt file still counts (see the checker)."""
        p = self.path(split, cid, modality)
        if modality == "faces":
            if not p.is_dir():
                return False
            with os.scandir(p) as it:
                return any(os.path.splitext(e.name)[1].lower() in FACE_EXTENSIONS for e in it)
        return p.is_file()

    # ------------------------------------------------------------------------------- loading
    def load_modality(self, split: str, cid, modality: str, *, face_size=None, max_face_frames=None,
                      video_kwargs: dict | None = None):
        """Load one modality: audio -> (N,) float32 at 16 kHz; faces -> uint8 (T,H,W,3);
        video -> (uint8 (T,H,W,3), fps); text -> str; features -> float32 (T, D)."""
        p = self.path(split, cid, modality)
        if modality == "audio":
            return load_audio(p)
        if modality == "faces":
            return load_face_crops(p, size=face_size, max_frames=max_face_frames)
        if modality == "video":
            return load_video_frames(p, **(video_kwargs or {}))
        if modality == "text":
            return load_transcript(p)
        return load_features(p)

    def _no_files(self, split: str, cid) -> bool:
        return not any(self.has(split, cid, m) for m in MODALITIES)

    def load_clip(
        self,
        split: str,
        cid,
        modalities: Iterable[str] = ("audio", "faces", "text"),
        on_error: str = "raise",
        report: SkipReport | None = None,
        *,
        required: Iterable[str] = (),
        face_size=None,
        max_face_frames: int | None = None,
        video_kwargs: dict | None = None,
    ) -> dict | None:
        """One clip as ``{"id", "split", "labels", <modality>: value, ...}``.

        ``labels`` is float32 (6,) in EMOTIONS order for train/valid, None for test. ``video``
        gives the frames and adds ``video_fps``. A modality that is *absent* (file missing, zero
        bytes, no samples/frames/crops: kinds in :data:`ABSENT_KINDS`) is ``None`` and recorded
        in ``report.missing``, because any clip may lack a modality and a model must still
        predict for it -- unless it is listed in ``required``, which makes absence an error.

        A corrupt file (unreadable, NaN, wrong rank...) and a clip with no file in any modality
        folder (kind ``no_files``) are errors. ``on_error`` decides what an error does:
        ``"raise"`` raises :class:`DataError`; ``"skip"`` records it in ``report.skipped`` and
        returns ``None``; ``"none"`` records it in ``report.missing`` and sets that modality to
        ``None`` (keep the clip, drop the bad modality).
        """
        if on_error not in ("raise", "skip", "none"):
            raise ValueError(f"on_error must be 'raise', 'skip' or 'none', got {on_error!r}")
        report = report if report is not None else SkipReport()
        cid = clip_stem(cid)
        modalities = tuple(modalities)
        required = set(required)
        labels = None
        if split != "test":
            df = self.split(split)
            if cid in df.index:
                labels = df.loc[cid, list(EMOTIONS)].to_numpy(dtype=np.float32)
        out: dict = {"id": cid, "split": split, "labels": labels}
        if self._no_files(split, cid):
            err = DataError(self.clip_dir(split), f"clip {cid} of split {split} has no files in any modality folder",
                            kind="no_files")
            if on_error == "raise":
                raise err
            if on_error == "skip":
                report.add(cid, err)
                return None
        for mod in modalities:
            try:
                value = self.load_modality(split, cid, mod, face_size=face_size, max_face_frames=max_face_frames,
                                           video_kwargs=video_kwargs)
            except DataError as err:
                if err.kind in ABSENT_KINDS and mod not in required:
                    report.add_missing(cid, mod, err)
                    value = None
                elif on_error == "raise":
                    raise
                elif on_error == "skip":
                    report.add(cid, err)
                    return None
                else:
                    report.add_missing(cid, mod, err)
                    value = None
            if mod == "video":
                out["video"], out["video_fps"] = (None, None) if value is None else value
            else:
                out[mod] = value
        return out

    def iter_clips(
        self,
        split: str,
        modalities: Iterable[str] = ("audio", "faces", "text"),
        on_error: str = "skip",
        progress: bool = True,
        *,
        ids: Iterable | None = None,
        report: SkipReport | None = None,
        **load_kwargs,
    ) -> Iterator[tuple[str, dict]]:
        """Yield ``(id, clip dict)`` for every id of the split (or ``ids``), via :meth:`load_clip`.

        Under ``on_error="skip"`` (default) bad clips are not yielded; each is listed in the
        :class:`SkipReport` that is ``report`` if given, and always ``self.last_report``
        (filled while iterating; complete when the loop ends). ``load_kwargs`` go to load_clip.
        """
        from tqdm.auto import tqdm

        rep = report if report is not None else SkipReport()
        self.last_report = rep
        todo = self.ids(split) if ids is None else [clip_stem(i) for i in ids]
        for cid in tqdm(todo, desc=f"{split} clips", disable=not progress, leave=False):
            clip = self.load_clip(split, cid, modalities, on_error=on_error, report=rep, **load_kwargs)
            if clip is not None:
                yield cid, clip
