"""Does a stream cover every clip of a split? The check every reader of stored features runs before training or
predicting, so a split that was never extracted is an error rather than a split of clips without features."""

from __future__ import annotations

import json
from pathlib import Path

from emi_lib.features.packed import PackedStore
from emi_lib.features.store import META_NAME, RAW_MODALITIES, split_composite


def check_coverage(store, pair, split: str, ids, packed=None) -> None:
    """Raise ``ValueError`` unless the stream ``pair`` = (modality, key) was produced for every clip of ``ids``:
    stored, or listed by its extraction as missing or failed (``_meta.json``; a concatenation ``a+b``: by each
    part). With ``packed``, every id must be listed in ``packed/<modality>/<key>/<split>`` (a packed store lists
    the clips that lack the stream with length 0)."""
    mod, key = pair
    ids = set(ids)
    if packed is not None:
        folder = Path(packed) / mod / key / split
        listed = set(PackedStore(folder)) if (folder / "index.json").exists() else set()
        where = folder
    else:
        listed, where = store.done_ids(mod, key, split), store.folder(mod, key, split)
        for part in split_composite(key) if mod in RAW_MODALITIES else [key]:
            meta = store.folder(mod, part, split) / META_NAME
            if meta.exists():  # clips the extraction found without the modality (or failing) are accounted for
                info = json.loads(meta.read_text())
                listed |= (set(info.get("missing", {})) | set(info.get("failed", {}))) & ids
    lacking = sorted(ids - listed)
    if lacking:
        raise ValueError(f"{where}: {mod}/{key} has no {split} features for {len(lacking)} of {len(ids)} clips "
                         f"(e.g. {lacking[:5]}): extract (python -m emi_lib.features.extract ... --splits {split}) "
                         "or export (launch stage1 --export) them first")
