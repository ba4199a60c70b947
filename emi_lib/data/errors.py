"""The one exception type of the data layer, and the report that ``on_error="skip"`` fills."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message always names the file (or split) and the problem."""

    def __init__(self, path: str | Path | None, problem: str, *, kind: str = "invalid"):
        self.path = None if path is None else str(path)
        self.problem = problem
        #: a short machine-readable category, e.g. "missing", "empty", "unreadable", "rank",
        #: "nonfinite", "unsafe", "header", "id", "range", "nan", "duplicate", "no_files"
        self.kind = kind
        where = f"{self.path}: " if self.path else ""
        super().__init__(f"{where}{problem}")


@dataclass
class SkipReport:
    """What went wrong under ``on_error="skip"``: never silent.

    ``skipped`` has one entry per clip that was dropped (a corrupt file, a clip with no files);
    ``missing`` has one entry per optional modality that a *returned* clip lacks (its value in the
    clip dict is ``None``), so that a caller can count how often a model saw a degraded input.
    """

    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # (clip id, kind, message)
    missing: list[tuple[str, str, str]] = field(default_factory=list)  # (clip id, modality, message)

    def add(self, clip_id: str, err: DataError) -> None:
        """Record a skipped clip."""
        self.skipped.append((str(clip_id), err.kind, str(err)))

    def add_missing(self, clip_id: str, modality: str, err: DataError) -> None:
        """Record a modality that a returned clip lacks (or that was unusable and set to None)."""
        self.missing.append((str(clip_id), modality, str(err)))

    def __len__(self) -> int:
        return len(self.skipped)

    def skipped_ids(self) -> list[str]:
        return [cid for cid, _, _ in self.skipped]

    def counts(self) -> Counter:
        return Counter(kind for _, kind, _ in self.skipped)

    def missing_counts(self) -> Counter:
        return Counter(mod for _, mod, _ in self.missing)

    def summary(self, max_examples: int = 3) -> str:
        lines = []
        if not self.skipped:
            lines.append("no clips skipped")
        else:
            lines.append(f"{len(self.skipped)} clip(s) skipped:")
            for kind, n in self.counts().most_common():
                lines.append(f"  {kind}: {n}")
                for cid, _, msg in [s for s in self.skipped if s[1] == kind][:max_examples]:
                    lines.append(f"    {cid}: {msg}")
        if self.missing:
            lines.append(f"{len(self.missing)} missing modality value(s) in returned clips:")
            for mod, n in self.missing_counts().most_common():
                lines.append(f"  {mod}: {n}")
                for cid, _, msg in [s for s in self.missing if s[1] == mod][:max_examples]:
                    lines.append(f"    {cid}: {msg}")
        return "\n".join(lines)
