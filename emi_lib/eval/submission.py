"""The challenge submission: write it, validate it, and (on SynthMimic) score it.

A submission is a CSV with exactly the header ``Filename,Admiration,Amusement,Determination,
Empathic Pain,Excitement,Joy``, one row per test id (``Filename`` the integer id, no zero padding),
rows sorted by id and every value a number in [0, 1].

- :func:`write_submission` clips predictions to [0, 1] and writes atomically; a NaN, a missing
  column or a duplicate id raises instead of writing (a broken file must never reach the server).
- :func:`validate_submission` reads a file back and rejects it with a :class:`DataError` that
  names every problem found: wrong header, rows with a wrong field count, non-integer ids,
  duplicate ids, non-numeric values, NaN, values outside [0, 1], and ids missing from or extra to
  ``test_data/test_split.csv`` (a few listed each time).
- :func:`score_submission` scores a valid file with the hidden labels in
  ``synthmimic/test_labels.csv`` (SynthMimic only; the real challenge keeps them on its server), read by
  :func:`emi_lib.data.labels.read_hidden_labels` (importable from here too).
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from emi_lib.constants import EMOTIONS, HEADER, clip_stem
from emi_lib.data.errors import DataError
from emi_lib.data.labels import read_hidden_labels
from emi_lib.eval.metrics import challenge_score

_LISTED = 5


def _atomic_write_text(text: str, path: str | os.PathLike) -> Path:
    """Temp file in the same folder, fsync, then ``os.replace``: never a half-written submission."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _int_ids(index) -> list[int]:
    out = []
    for cid in index:
        s = str(cid).strip()
        if not s.isdigit():
            raise ValueError(f"prediction index holds {cid!r}, which is not an integer clip id")
        out.append(int(s))
    return out


def write_submission(pred: pd.DataFrame, path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Write ``pred`` (indexed by clip id, the six EMOTIONS columns) as the challenge CSV.

    Values are clipped to [0, 1]; rows are sorted by integer id. Raises ``ValueError`` on a missing
    column, a NaN/inf value or a duplicate id; with ``root``, also when the ids are not exactly the
    test split's (then nothing is written). Returns the path."""
    missing = [e for e in EMOTIONS if e not in pred.columns]
    if missing:
        raise ValueError(f"predictions lack the columns {missing}")
    values = pred[list(EMOTIONS)].to_numpy(dtype=np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        rows = [str(pred.index[i]) for i in np.where(bad.any(1))[0][:_LISTED]]
        raise ValueError(f"{int(bad.any(1).sum())} prediction row(s) hold NaN/inf (e.g. ids {rows}): not writing")
    ids = _int_ids(pred.index)
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})[:_LISTED]
        raise ValueError(f"duplicate ids in predictions: {dup}")
    if root is not None:
        from emi_lib.data.layout import read_split

        want = {int(i) for i in read_split(root, "test").index}
        lacking, extra = sorted(want - set(ids)), sorted(set(ids) - want)
        if lacking or extra:
            raise ValueError(f"predictions do not cover the test split: missing ids {lacking[:_LISTED]} "
                             f"({len(lacking)}), extra ids {extra[:_LISTED]} ({len(extra)})")
    df = pd.DataFrame(np.clip(values, 0.0, 1.0), columns=list(EMOTIONS))
    df.insert(0, "Filename", ids)
    df = df.sort_values("Filename")
    return _atomic_write_text(df.to_csv(index=False, float_format="%.6f", lineterminator="\n"), path)


def validate_submission(path: str | os.PathLike, root: str | os.PathLike) -> pd.DataFrame:
    """Check a submission file against the test split of ``root``; return it as a DataFrame indexed
    by the 5-digit id (EMOTIONS columns). Any problem raises :class:`DataError` naming each one."""
    from emi_lib.data.layout import read_split

    path = Path(path)
    if not path.exists():
        raise DataError(path, "submission file does not exist", kind="missing")
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = [r for r in csv.reader(fh) if any(c.strip() for c in r)]
    if not rows:
        raise DataError(path, "empty submission (no header, no rows)", kind="empty")
    header = tuple(rows[0])
    if header != HEADER:
        raise DataError(path, f"wrong header: expected {','.join(HEADER)!r}, found {','.join(header)!r}",
                        kind="header")
    problems: dict[str, list[str]] = {}

    def add(kind: str, msg: str) -> None:
        problems.setdefault(kind, []).append(msg)

    ids, values, seen = [], [], {}
    for line, row in enumerate(rows[1:], start=2):
        if len(row) != len(HEADER):
            add("wrong field count", f"line {line}: {len(row)} fields, expected {len(HEADER)}")
            continue
        raw = row[0].strip()
        if not raw.isdigit():
            add("non-integer Filename", f"line {line}: {raw!r}")
            continue
        if int(raw) in seen:
            add("duplicate id", f"{raw} (lines {seen[int(raw)]} and {line})")
            continue
        seen[int(raw)] = line
        vals = []
        for emo, cell in zip(EMOTIONS, row[1:]):
            try:
                v = float(cell)
            except ValueError:
                add("non-numeric value", f"line {line} {emo} = {cell!r}")
                v = math.nan
            else:
                if math.isnan(v):
                    add("NaN value", f"line {line} {emo}")
                elif not 0.0 <= v <= 1.0:
                    add("value outside [0, 1]", f"line {line} {emo} = {cell.strip()}")
            vals.append(v)
        ids.append(int(raw))
        values.append(vals)
    want = {int(i) for i in read_split(root, "test").index}
    for kind, found in (("missing ids (in test_split.csv, not in the submission)", sorted(want - set(seen))),
                        ("extra ids (not in test_split.csv)", sorted(set(seen) - want))):
        for i in found:
            add(kind, str(i))
    if problems:
        parts = []
        for kind, items in problems.items():
            more = f", ... (+{len(items) - _LISTED} more)" if len(items) > _LISTED else ""
            parts.append(f"{kind} ({len(items)}): {'; '.join(items[:_LISTED])}{more}")
        kinds = list(problems)
        raise DataError(path, f"invalid submission: {' | '.join(parts)}",
                        kind=kinds[0] if len(kinds) == 1 else "invalid")
    index = pd.Index([clip_stem(i) for i in ids], name="Filename")
    return pd.DataFrame(np.asarray(values, dtype=np.float64).reshape(-1, len(EMOTIONS)), index=index,
                        columns=list(EMOTIONS)).sort_index()


def score_submission(path: str | os.PathLike, root: str | os.PathLike) -> dict:
    """Validate the file, then ``challenge_score`` it against the hidden labels (SynthMimic only)."""
    labels = read_hidden_labels(root)
    sub = validate_submission(path, root)
    return challenge_score(sub, labels.loc[sub.index])
