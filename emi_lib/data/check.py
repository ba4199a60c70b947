"""Audit a data root: ``python -m emi_lib.data.check ROOT [--sample N] [--seed S] [--max-examples K]``.

Prints every problem kind with its count and first examples, exit code 1 if anything is wrong,
0 if clean. Two tiers, so that a 17k-clip root takes minutes, not hours:

1. *every* id of every split whose CSV exists: each modality folder is listed once
   (``os.scandir``) and every file's existence and size come from that listing, including
   every crop of every face folder (numbering gaps, zero-length crops);
2. a seeded random *sample* of ``sample`` clips per split and modality is opened: mp4 header and
   first frame (not the whole clip), audio decoded, up to :data:`CROPS_PER_FACE_DIR` crops per
   face folder decoded, transcripts read, features loaded through the safe loader.

A modality whose folder is absent altogether (e.g. no ``vit/`` in a SynthMimic root, no
``text/`` in the challenge release) is noted, not counted as a problem; a folder that exists
but lacks a clip's file is. Problem kinds: ``split CSV``, ``no split CSV``, ``id in several
splits``, ``split id with no files``, ``missing <modality>``, ``empty face folder``,
``zero-length file``, ``unreadable media``, ``bad features``, ``face numbering gap``,
``orphan file``, ``unexpected file``, ``missing folder``, ``data root``. (An empty transcript is valid: a silent clip.)
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from emi_lib.constants import SPLIT_CSV, clip_stem
from emi_lib.data.errors import DataError
from emi_lib.data.layout import FEATURE_EXTENSIONS, FEATURE_KINDS, MEDIA_FOLDERS, DataRoot
from emi_lib.data.media import FACE_EXTENSIONS, load_audio, load_face_crop, load_transcript, probe_video
from emi_lib.data.safe_load import load_features

#: Crops decoded per sampled face folder (evenly spaced, first and last included).
CROPS_PER_FACE_DIR = 8
_STEM_RE = re.compile(r"^\d{5,}$")
_EXT = {"video": (".mp4",), "audio": (".mp3", ".wav"), "text": (".txt",)}


@dataclass
class Problem:
    kind: str
    split: str | None
    clip_id: str | None
    path: str | None
    message: str

    def __str__(self) -> str:
        where = " ".join(x for x in (self.split, self.clip_id) if x)
        return f"{where}: {self.message}" if where else self.message


@dataclass
class CheckReport:
    """What :func:`check_root` found. ``ok`` is True when there is no problem."""

    root: str
    sample: int
    seed: int
    problems: list[Problem] = field(default_factory=list)
    info: list[str] = field(default_factory=list)
    stats: dict = field(default_factory=dict)  # {split: {"ids": n, "<modality>": present, ...}}
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, kind: str, message: str, split=None, clip_id=None, path=None) -> None:
        self.problems.append(Problem(kind, split, clip_id, None if path is None else str(path), message))

    def counts(self) -> dict[str, int]:
        """``{problem kind: count}``, most frequent first."""
        return dict(Counter(p.kind for p in self.problems).most_common())

    def by_kind(self, kind: str) -> list[Problem]:
        return [p for p in self.problems if p.kind == kind]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([vars(p) for p in self.problems], columns=["kind", "split", "clip_id", "path", "message"])

    def summary(self, max_examples: int = 5) -> str:
        lines = [f"data root: {self.root}"]
        for split, st in self.stats.items():
            present = ", ".join(f"{m} {n}" for m, n in st.items() if m != "ids")
            lines.append(f"  {split}: {st['ids']} ids; files present: {present or '-'}")
        lines += [f"  note: {m}" for m in self.info]
        lines.append(f"  opened a sample of up to {self.sample} clips per split and modality (seed {self.seed}); "
                     f"{self.elapsed_s:.1f} s")
        if self.ok:
            lines.append("OK: no problems found")
            return "\n".join(lines)
        counts = self.counts()
        lines.append(f"PROBLEMS: {len(self.problems)} in {len(counts)} kind(s)")
        for kind, n in counts.items():
            lines.append(f"  {kind}: {n}")
            for p in self.by_kind(kind)[:max_examples]:
                lines.append(f"    {p}")
            if n > max_examples:
                lines.append(f"    ... and {n - max_examples} more")
        return "\n".join(lines)


def _lenient_ids(path: Path) -> list[str]:
    """Ids from a CSV that failed validation: every first-column value that is an integer, so
    that its files can still be checked (and are not all reported as orphans)."""
    out = []
    try:
        with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
            for row in csv.reader(fh):
                if row and row[0].strip().isdigit():
                    out.append(clip_stem(int(row[0].strip())))
    except OSError:
        return []
    return list(dict.fromkeys(out))


def _listing(folder: Path) -> dict[str, tuple[str, int, bool]]:
    """``{name: (name, size, is_dir)}`` of a folder, one scandir (sizes of files only)."""
    out = {}
    with os.scandir(folder) as it:
        for e in it:
            if e.name.startswith("."):
                continue
            is_dir = e.is_dir()
            out[e.name] = (e.name, 0 if is_dir else e.stat().st_size, is_dir)
    return out


def _feature_folders(clip_dir: Path) -> list[str]:
    """The challenge's feature folders (present or not) plus any other folder whose first entries look like
    ``{id}.pkl|.npy|.pt|.npz`` (features some team added)."""
    found = list(FEATURE_KINDS)  # always listed, so that their absence is noted
    skip = set(MEDIA_FOLDERS.values()) | set(FEATURE_KINDS) | {"test_data"}
    for d in sorted(p for p in clip_dir.iterdir() if p.is_dir() and p.name not in skip and not p.name.startswith(".")):
        with os.scandir(d) as it:
            for i, e in enumerate(it):
                stem, ext = os.path.splitext(e.name)
                if _STEM_RE.match(stem) and ext in FEATURE_EXTENSIONS:
                    found.append(d.name)
                    break
                if i >= 20:
                    break
    return found


def _index_folder(folder: Path, modality: str) -> tuple[dict[str, tuple[str, int]], list[str]]:
    """``({stem: (name, size)}, unexpected names)`` for a flat modality folder."""
    exts = _EXT.get(modality, FEATURE_EXTENSIONS)
    by_stem: dict[str, tuple[str, int]] = {}
    unexpected = []
    for name, size, is_dir in _listing(folder).values():
        stem, ext = os.path.splitext(name)
        if is_dir or ext.lower() not in exts or not _STEM_RE.match(stem):
            unexpected.append(name)
            continue
        # preference order of the loader (mp3 before wav, pkl before npy ...)
        if stem not in by_stem or exts.index(ext.lower()) < exts.index(os.path.splitext(by_stem[stem][0])[1].lower()):
            by_stem[stem] = (name, size)
    return by_stem, unexpected


def _check_face_dir(rep: CheckReport, split: str, cid: str, d: Path) -> list[str] | None:
    """Stat every crop: zero-length crops, names without a frame number, gaps in 0..n-1.
    Returns the crop names in numeric order (None when the folder holds no crop)."""
    numbered = []
    for name, size, is_dir in _listing(d).values():
        stem, ext = os.path.splitext(name)
        if is_dir or ext.lower() not in FACE_EXTENSIONS:
            continue
        if not stem.isdigit():
            rep.add("unexpected file", f"{d / name}: face crop name is not a frame number", split, cid, d / name)
            continue
        if size == 0:
            rep.add("zero-length file", f"{d / name}: zero-length face crop", split, cid, d / name)
        numbered.append((int(stem), name))
    if not numbered:
        rep.add("empty face folder", f"{d}: face folder holds no crops", split, cid, d)
        return None
    numbered.sort()
    nums = [n for n, _ in numbered]
    expected = range(nums[-1] + 1)
    if len(nums) != len(expected) or nums[0] != 0 or len(set(nums)) != len(nums):
        gaps = sorted(set(expected) - set(nums))
        shown = ", ".join(map(str, gaps[:8])) + (" ..." if len(gaps) > 8 else "")
        dup = len(nums) - len(set(nums))
        rep.add("face numbering gap",
                f"{d}: {len(nums)} crops numbered 0..{nums[-1]}; missing {len(gaps)} ({shown})"
                + (f"; {dup} duplicate numbers" if dup else ""), split, cid, d)
    return [name for _, name in numbered]


def _open_one(dr: DataRoot, split: str, mod: str, cid: str, face_names: list[str] | None):
    """Open one sampled file the way a reader would; returns (rate, channels) for audio, D for
    features, None otherwise. mp4: header + first frame only; faces: up to
    :data:`CROPS_PER_FACE_DIR` evenly spaced crops, first and last included."""
    if mod == "video":
        probe_video(dr.video_path(split, cid))
    elif mod == "audio":
        import soundfile as sf

        p = dr.audio_path(split, cid)
        load_audio(p)
        info = sf.info(str(p))
        return (info.samplerate, info.channels)
    elif mod == "faces":
        names = face_names or []
        step = max(1, (len(names) - 1) // max(1, CROPS_PER_FACE_DIR - 1))
        for name in sorted(set(names[::step][: CROPS_PER_FACE_DIR - 1]) | set(names[-1:])):
            load_face_crop(dr.face_dir(split, cid) / name)
    elif mod == "text":
        load_transcript(dr.transcript_path(split, cid))
    else:
        return load_features(dr.feature_path(split, cid, mod)).shape[1]
    return None


def _sample(rng: random.Random, ids: list[str], k: int) -> list[str]:
    return ids if len(ids) <= k else sorted(rng.sample(ids, k))


def _check_split_tables(rep: CheckReport, dr: DataRoot) -> tuple[dict[str, list[str]], set[str]]:
    """Phase 1: every split CSV validates, and no id is in two splits. Returns ``({split: ids}, splits whose
    CSV failed)``; a failed CSV's ids are read leniently, a best effort for the later phases."""
    split_ids: dict[str, list[str]] = {}
    failed: set[str] = set()
    for split, rel in SPLIT_CSV.items():
        path = dr.root / rel
        if not path.exists():
            rep.info.append(f"no {split} split ({rel} not found)")
            continue
        try:
            split_ids[split] = dr.ids(split)
        except DataError as err:
            rep.add("split CSV", str(err), split, path=path)
            split_ids[split] = _lenient_ids(path)
            failed.add(split)
    if not split_ids:
        rep.add("no split CSV", f"none of {', '.join(SPLIT_CSV.values())} exists under {dr.root}", path=dr.root)
    seen: dict[str, str] = {}
    for split, ids in split_ids.items():
        for cid in ids:
            if cid in seen:
                rep.add("id in several splits", f"id {cid} is in both {seen[cid]} and {split}", split, cid)
            else:
                seen[cid] = split
    return split_ids, failed


def _index_modalities(rep: CheckReport, dr: DataRoot, split_ids: dict, failed: set) -> dict[Path, dict[str, dict]]:
    """Phase 2: list every modality folder once per clip folder -> ``{clip folder: {modality: {id: (name,
    size)}}}``; unexpected names and orphan files (ids in no split) are reported."""
    splits_of_dir: dict[Path, list[str]] = defaultdict(list)
    for split in split_ids:
        splits_of_dir[dr.clip_dir(split)].append(split)
    index: dict[Path, dict[str, dict]] = {}
    for cdir, splits in splits_of_dir.items():
        index[cdir] = {}
        if not cdir.is_dir():
            rep.add("missing folder", f"{cdir} does not exist (needed by {', '.join(splits)})", path=cdir)
            continue
        wanted = {cid for s in splits for cid in split_ids[s]}
        orphans_known = not failed.intersection(splits)
        if not orphans_known:
            rep.info.append(f"orphan files under {cdir} not reported: the CSV of {', '.join(splits)} did not validate")
        mods = {**MEDIA_FOLDERS, **{k: k for k in _feature_folders(cdir)}}
        for mod, folder in mods.items():
            fpath = cdir / folder
            if not fpath.is_dir():
                rep.info.append(f"no {fpath.relative_to(dr.root)}/ folder: {mod} not checked for {', '.join(splits)}")
                continue
            if mod == "faces":
                entries = _listing(fpath)
                by_stem = {n: (n, 0) for n, (_, _, is_dir) in entries.items() if is_dir and _STEM_RE.match(n)}
                unexpected = [n for n in entries if n not in by_stem]
            else:
                by_stem, unexpected = _index_folder(fpath, mod)
            index[cdir][mod] = by_stem
            for name in unexpected:
                rep.add("unexpected file", f"{fpath / name}: name is not a clip id with a {mod} extension",
                        path=fpath / name)
            for stem in sorted(set(by_stem) - wanted) if orphans_known else ():
                rep.add("orphan file", f"{fpath / by_stem[stem][0]}: id {stem} is in no split of {', '.join(splits)}",
                        path=fpath / by_stem[stem][0])
        if not index[cdir]:
            rep.add("missing folder", f"no modality folder ({', '.join(MEDIA_FOLDERS.values())}, features) under "
                    f"{cdir}: {', '.join(splits)} cannot be checked", path=cdir)
    return index


def _check_clip_files(rep: CheckReport, dr: DataRoot, split_ids: dict, index: dict, progress: bool):
    """Phase 3: every id of every split has its files, none of zero length (face folders checked by name).
    Returns ``({(split, modality): ids whose file can be opened}, {(split, id): face-crop names})``."""
    from tqdm.auto import tqdm

    eligible: dict[tuple[str, str], list[str]] = defaultdict(list)
    face_names: dict[tuple[str, str], list[str]] = {}
    bar = tqdm(total=sum(map(len, split_ids.values())), desc="stat files", unit="clip", disable=not progress)
    for split, ids in split_ids.items():
        cdir = dr.clip_dir(split)
        mods = index.get(cdir, {})
        st = rep.stats[split] = {"ids": len(ids), **{m: 0 for m in mods}}
        for cid in ids:
            bar.update()
            if mods and not any(cid in by_stem for by_stem in mods.values()):
                rep.add("split id with no files", f"clip {cid} has no file in any of "
                        f"{', '.join(MEDIA_FOLDERS.get(m, m) for m in mods)} under {cdir}", split, cid, cdir)
                continue
            for mod, by_stem in mods.items():
                if cid not in by_stem:
                    rep.add(f"missing {mod}", f"{dr.path(split, cid, mod)} does not exist", split, cid,
                            dr.path(split, cid, mod))
                    continue
                st[mod] += 1
                name, size = by_stem[cid]
                folder = cdir / MEDIA_FOLDERS.get(mod, mod)
                if mod == "faces":
                    names = _check_face_dir(rep, split, cid, folder / name)
                    if names:
                        face_names[(split, cid)] = names
                        eligible[(split, mod)].append(cid)
                elif size == 0 and mod != "text":
                    rep.add("zero-length file", f"{folder / name}: zero-length {mod} file (0 bytes)", split, cid,
                            folder / name)
                else:
                    eligible[(split, mod)].append(cid)
    bar.close()
    return eligible, face_names


def _open_sample(rep: CheckReport, dr: DataRoot, eligible: dict, face_names: dict, sample: int, seed: int,
                 progress: bool) -> None:
    """Phase 4: open and decode a seeded sample of every (split, modality); feature dims must agree across the
    sample *and* across splits (a model trained on D=768 cannot read a test set extracted at D=1024)."""
    from tqdm.auto import tqdm

    rng = random.Random(seed)
    dims: dict[tuple[str, str], Counter] = defaultdict(Counter)
    audio_rates: Counter = Counter()
    chosen = [(split, mod, cid) for (split, mod), ids in sorted(eligible.items()) for cid in _sample(rng, ids, sample)]
    for split, mod, cid in tqdm(chosen, desc="open sample", unit="file", disable=not progress):
        try:
            got = _open_one(dr, split, mod, cid, face_names.get((split, cid)))
        except DataError as err:
            rep.add("unreadable media" if mod in MEDIA_FOLDERS else "bad features", str(err), split, cid, err.path)
            continue
        if mod == "audio":
            audio_rates[got] += 1
        elif mod not in MEDIA_FOLDERS:
            dims[(split, mod)][got] += 1
    by_mod: dict[str, Counter] = defaultdict(Counter)
    for (split, mod), dcount in dims.items():
        by_mod[mod].update({(split, d): n for d, n in dcount.items()})
    for mod, dcount in sorted(by_mod.items()):
        distinct = {d for _, d in dcount}
        if len(distinct) > 1:
            seen_d = ", ".join(f"{s} D={d}: {n}" for (s, d), n in sorted(dcount.items()))
            rep.add("bad features", f"{mod} features have different dims D in the sample ({seen_d})")
        else:
            rep.info.append(f"{mod} features: D = {distinct.pop()} in every sampled file")
    if audio_rates:
        rates = ", ".join(f"{sr} Hz x{ch}ch: {n}" for (sr, ch), n in audio_rates.most_common())
        rep.info.append(f"sampled audio formats: {rates} (loaders resample to 16 kHz mono)")


def check_root(root, sample: int = 50, seed: int = 0, progress: bool = False) -> CheckReport:
    """Audit a data root (see the module docstring) and return a :class:`CheckReport`: the split tables, an
    index of every modality folder, every clip's files, then a seeded sample opened and decoded."""
    t0 = time.perf_counter()
    rep = CheckReport(root=str(root), sample=sample, seed=seed)
    try:
        dr = DataRoot(root)
    except DataError as err:
        rep.add("data root", str(err), path=root)
        return rep
    split_ids, failed = _check_split_tables(rep, dr)
    index = _index_modalities(rep, dr, split_ids, failed)
    eligible, face_names = _check_clip_files(rep, dr, split_ids, index, progress)
    _open_sample(rep, dr, eligible, face_names, sample, seed, progress)
    rep.elapsed_s = time.perf_counter() - t0
    return rep


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m emi_lib.data.check", description=__doc__.split("\n")[0])
    ap.add_argument("root", help="data root (holds train_split.csv, raw/, audio/, ..., test_data/)")
    ap.add_argument("--sample", type=int, default=50, help="clips opened per split and modality (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the sample (default 0)")
    ap.add_argument("--max-examples", type=int, default=5, help="examples printed per problem kind (default 5)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    rep = check_root(args.root, sample=args.sample, seed=args.seed, progress=not args.no_progress)
    print(rep.summary(max_examples=args.max_examples))
    return 0 if rep.ok else 1


if __name__ == "__main__":
    sys.exit(main())
