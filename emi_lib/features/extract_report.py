"""What an extraction run did, and what failed in it: :class:`ExtractionReport` (one split, one modality),
:class:`ExtractionReports` (what :func:`~emi_lib.features.extract.extract_all` returns), their merges (the
parts of a concatenated backbone, the ranks of a DDP run), and the same on disk: :func:`write_meta` /
:func:`read_meta` (a split's ``_meta.json``) and :func:`recorded_failures` (read back from a store).

Three outcomes are kept apart, and never merged into "missing":

- **missing**: the clip has no media for the modality (no face folder / crops, no audio file, no
  transcript). Legitimate: nothing is written, the model sees the modality as absent.
- **failed**: the media exist but no features could be made (a corrupt or unsafe file, every face
  crop unreadable, features of the wrong size or non-finite). Nothing is written either, but this is a
  fault: it is listed with its error, printed at the end of every run (even without progress or
  ``verbose``), kept in ``_meta.json`` and returned in :attr:`ExtractionReport.failures`.
- **unreadable frames**: some face crops of a clip could not be decoded; the clip is stored with those
  steps masked (whole-NaN rows, :func:`~emi_lib.features.store.valid_steps`) and listed per clip with the
  files and problems, under the same accessor. The rest of the clip is kept.

``failures`` is JSON-able, so a notebook can ``record("extraction_failures", reports.failures, OUT)``.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from emi_lib.data import DataError, SkipReport
from emi_lib.features.store import META_NAME, FeatureStore, backbone_key


@dataclass
class ExtractionReport:
    """What one :func:`~emi_lib.features.extract.extract_split` run did. ``issues.missing`` holds clips that
    lack the modality (nothing written); ``issues.skipped`` holds clips that failed (corrupt or unsafe
    files); ``unreadable_frames`` {id: ["file: problem", ...]} the stored clips with masked unreadable crops
    (of this run, and of earlier runs for clips already stored)."""

    split: str
    modality: str
    backbone: str
    store_backbone: str
    folder: Path
    n_clips: int = 0
    computed: list[str] = field(default_factory=list)
    existing: list[str] = field(default_factory=list)
    issues: SkipReport = field(default_factory=SkipReport)
    strides: dict[str, int] = field(default_factory=dict)
    reused: list[str] = field(default_factory=list)  # copied from a root with byte-identical media
    unreadable_frames: dict[str, list[str]] = field(default_factory=dict)
    dim: int | None = None
    frame_rate: float | None = None
    seconds: float = 0.0
    cleaned_tmp: int = 0

    n_done = property(lambda self: len(self.computed))
    n_existing = property(lambda self: len(self.existing))
    n_missing = property(lambda self: len(self.issues.missing))
    n_failed = property(lambda self: len(self.issues.skipped))
    missing_ids = property(lambda self: [cid for cid, _, _ in self.issues.missing])
    failed_ids = property(lambda self: self.issues.skipped_ids())

    @property
    def n_unreadable_frames(self) -> int:
        """Unreadable face crops over every clip kept with masked steps."""
        return sum(len(v) for v in self.unreadable_frames.values())

    @property
    def clips_per_s(self) -> float:
        """Clips computed per second of this run (loading + encoding + writing)."""
        return self.n_done / self.seconds if self.seconds > 0 else float("nan")

    @property
    def failures(self) -> dict:
        """``{"failed": {id: {"kind", "message"}}, "unreadable_frames": {id: ["file: problem", ...]}}``
        (JSON-able; both empty when nothing failed)."""
        return {"failed": {c: {"kind": k, "message": m} for c, k, m in self.issues.skipped},
                "unreadable_frames": {c: list(v) for c, v in sorted(self.unreadable_frames.items())}}

    @property
    def any_failure(self) -> bool:
        return bool(self.issues.skipped or self.unreadable_frames)

    def failure_line(self, max_listed: int = 8) -> str:
        """One line naming the failed clips and the clips with unreadable frames ("" when there are none)."""
        return failure_line(f"{self.modality}/{self.store_backbone} {self.split}", self.failures, max_listed)

    def summary(self, max_listed: int = 5) -> str:
        head = (f"{self.modality}/{self.store_backbone} {self.split}: {self.n_clips} clips, {self.n_done} computed"
                f" ({self.clips_per_s:.1f} clips/s), {self.n_existing} already stored, "
                + (f"{len(self.reused)} reused from identical media, " if self.reused else "") +
                f"{self.n_missing} missing, {self.n_failed} failed; D={self.dim}")
        if self.unreadable_frames:
            head += (f"; {len(self.unreadable_frames)} clip(s) kept with {self.n_unreadable_frames} unreadable "
                     "frame(s) masked")
        if self.cleaned_tmp:
            head += f"; removed {self.cleaned_tmp} stale .tmp file(s)"
        lines = [head]
        for title, rows in (("missing (nothing written)", [f"{c}: {m}" for c, _, m in self.issues.missing]),
                            ("failed", [f"{c} [{k}]: {m}" for c, k, m in self.issues.skipped]),
                            ("unreadable frames (masked steps)",
                             [f"{c}: {len(v)} frame(s): {v[0]}" for c, v in sorted(self.unreadable_frames.items())])):
            if rows:
                lines += [f"  {title}: {len(rows)}"] + [f"    {r}" for r in rows[:max_listed]]
                if len(rows) > max_listed:
                    lines.append(f"    ... and {len(rows) - max_listed} more (see {META_NAME})")
        return "\n".join(lines)


def failure_line(what: str, failures: dict, max_listed: int = 8) -> str:
    """``"<what>: N clip(s) FAILED (id [kind], ...); M clip(s) with unreadable frames masked (id: k, ...)"``,
    or "" when ``failures`` (the :attr:`ExtractionReport.failures` format) holds nothing."""
    failed, frames = failures.get("failed", {}), failures.get("unreadable_frames", {})
    if not failed and not frames:
        return ""

    def listed(items):
        items = list(items)
        more = f", ... {len(items) - max_listed} more" if len(items) > max_listed else ""
        return ", ".join(items[:max_listed]) + more

    parts = []
    if failed:
        names = listed("{} [{}]".format(c, v["kind"]) for c, v in failed.items())
        parts.append(f"{len(failed)} clip(s) FAILED, no features written ({names})")
    if frames:
        names = listed(f"{c}: {len(v)}" for c, v in frames.items())
        parts.append(f"{len(frames)} clip(s) kept with unreadable frames masked ({names})")
    return f"{what}: " + "; ".join(parts)


class ExtractionReports(dict):
    """``{"<modality>/<split>": ExtractionReport}`` (what :func:`~emi_lib.features.extract.extract_all`
    returns), plus :attr:`failures` over all of them."""

    @property
    def failures(self) -> dict:
        """``{"<modality>/<split>": report.failures}`` for the reports with a failed clip or an unreadable
        frame (empty when nothing failed); JSON-able, for a notebook's ``record``."""
        return {k: r.failures for k, r in self.items() if r.any_failure}

    def failure_lines(self) -> list[str]:
        return [r.failure_line() for r in self.values() if r.any_failure]


def recorded_failures(store, modality: str, backbone: str, splits) -> dict:
    """Failures as the extraction recorded them in ``_meta.json`` (:attr:`ExtractionReports.failures`
    format, keyed ``"<modality>/<split>"``), for stores filled by an earlier run (e.g. notebook 01).
    ``backbone`` is the store name (:func:`~emi_lib.features.extract.store_backbone`); a concatenation is
    read part by part. A split without metadata records nothing."""
    from emi_lib.features.store import FeatureStore, split_composite

    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    out: dict = {}
    for split in splits:
        got = {"failed": {}, "unreadable_frames": {}}
        for part in split_composite(backbone) if modality in ("vision", "audio") else [backbone]:
            path = store.folder(modality, part, split) / META_NAME
            if path.exists():
                meta = json.loads(path.read_text())
                got["failed"] |= meta.get("failed", {})
                got["unreadable_frames"] |= meta.get("unreadable_frames", {})
        if got["failed"] or got["unreadable_frames"]:
            out[f"{modality}/{split}"] = got
    return out


def merge_part_reports(backbone: str, name: str, reps: list[ExtractionReport]) -> ExtractionReport:
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


def merge_rank_reports(rep: ExtractionReport, todo: list[str], time_axis: str, wanted: list[str]):
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


def write_meta(folder: Path, rep: ExtractionReport, settings: dict, attempted: set[str], stored: set[str],
                split_ids: list[str]) -> Path:
    """Write ``<folder>/_meta.json`` (atomically) after a run: this run's outcome merged with what earlier runs
    recorded for the clips it did not attempt (module docstring of :mod:`emi_lib.features.extract`)."""
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
    tmp = folder / (META_NAME + ".tmp")  # written under the folder's lock (extract_job.split_lock) or by rank 0
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, path)
    return path


def read_meta(store, modality: str, backbone: str, split: str) -> dict:
    """The ``_meta.json`` of a split (``backbone``: the store name, see :func:`store_backbone`)."""
    store = store if isinstance(store, FeatureStore) else FeatureStore(store)
    path = store.folder(modality, backbone, split) / META_NAME
    if not path.exists():
        raise DataError(path, f"no extraction metadata for {modality}/{backbone}/{split}", kind="missing")
    return json.loads(path.read_text())
