r"""A stage-2 run folder that can predict on its own: the record ``launch stage2`` writes, and ``launch predict``.

A model is only half of a prediction: the test clips must reach it exactly as the training clips did (the same
feature streams, the stage-1 projection joined to the raw steps, the priors, and every dimension z-scored with
the *training* statistics; forgetting the last one gives wrong numbers without any error). ``launch stage2``
therefore writes, next to ``config.json`` and ``best.pt``:

- ``inputs.json`` (schema ``emi.stage2_run/v1``, :func:`run_record`): the data root and feature store
  (absolute paths), the root's fingerprint (``data``, :mod:`emi_lib.data.fingerprint`) and a SHA-1 of each split
  CSV of the root, the ``streams`` {vision, audio: (modality, key)},
  ``with_raw`` (the raw streams joined to aligned steps, or null), the stage-1 run it read (``stage1``: its
  ``stage1_outputs.json``) and ``stage1_inputs``, ``priors`` (on/off), ``packed`` (a packed-store folder or null),
  ``standardizer`` (the statistics file or null), ``text`` (a text stream or null), ``profile`` and the command
  line;
- ``standardizer.npz``: the train-split statistics (:meth:`emi_lib.train.inputs.Standardizer.save`).

:func:`predict_run` reads the record, checks that the root and store it is given (default: the recorded ones)
are the recorded ones (same resolved paths, same split CSVs; otherwise ``ValueError`` naming both), checks that
the split's features are there for every clip (:func:`~emi_lib.features.coverage.check_coverage`: a split never
extracted would otherwise be predicted as if every clip lacked both modalities), rebuilds the split with the same builder as training
(:func:`emi_lib.train.inputs.build_split`), applies the recorded standardiser, loads ``best.pt``
(:func:`emi_lib.train.stage2.load_run`: weights only, strict) and predicts every clip. For the test split it
writes the challenge submission (:func:`emi_lib.eval.submission.write_submission`, then
:func:`~emi_lib.eval.submission.validate_submission`); for train/valid the same CSV format, checked to cover the
split. Beside the CSV, ``<name>.json`` records what it was made from (run, checkpoint epoch, root, store, split,
clips lacking each stream) and, where labels exist (valid, train, SynthMimic's hidden test labels), the score.

The notebooks write the same record for every model they train (:func:`record_run_inputs`), so ``launch predict
--run`` works on notebook 02's models too, and notebook 04 checks a model against its inputs before exploring
it (:func:`check_run_inputs`).
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from emi_lib.constants import SPLIT_CSV, clip_stem
from emi_lib.data.fingerprint import ProvenanceError, check_same_root, root_fingerprint
from emi_lib.features.coverage import check_coverage
from emi_lib.train.checkpoint import atomic_write_json

RUN_SCHEMA = "emi.stage2_run/v1"
RUN_NAME = "inputs.json"
STD_NAME = "standardizer.npz"


def split_fingerprints(root) -> dict:
    """``{split: SHA-1 of its CSV}`` for every split CSV present under ``root``."""
    out = {}
    for split, rel in SPLIT_CSV.items():
        p = Path(root) / rel
        if p.exists():
            out[split] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


def run_record(*, root, store_dir, streams: dict, with_raw: dict | None, stage1, stage1_inputs, priors: bool,
               standardize: bool, packed, profile: str, argv=None, text_pair=None) -> dict:
    """The content of ``inputs.json`` (module docstring)."""
    return {"schema": RUN_SCHEMA, "data_root": str(Path(root).resolve()), "store_dir": str(Path(store_dir).resolve()),
            "data": root_fingerprint(root), "text": list(text_pair) if text_pair else None,
            "split_csv_sha1": split_fingerprints(root), "streams": {m: list(p) for m, p in streams.items()},
            "with_raw": {m: list(p) for m, p in with_raw.items()} if with_raw else None,
            "stage1": str(Path(stage1).resolve()) if stage1 else None,
            "stage1_inputs": stage1_inputs if stage1 else None, "priors": bool(priors),
            "packed": str(Path(packed).resolve()) if packed else None,
            "standardizer": STD_NAME if standardize else None, "config": "config.json", "profile": profile,
            "command": list(sys.argv if argv is None else argv)}


def write_run_record(run_dir, record: dict, standardizer=None) -> Path:
    """Write ``run_dir/standardizer.npz`` (when the record names one) and then ``run_dir/inputs.json``."""
    run_dir = Path(run_dir)
    if record["standardizer"]:
        if standardizer is None:
            raise ValueError("the run record names standardiser statistics but none were given")
        standardizer.save(run_dir / record["standardizer"])
    return atomic_write_json(record, run_dir / RUN_NAME)


def read_run_record(run_dir) -> dict:
    """``run_dir/inputs.json``, checked; a folder without one raises ``FileNotFoundError`` naming it."""
    path = Path(run_dir) / RUN_NAME
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: {run_dir} is not a run folder of "
                                "'python -m emi_lib.train.launch stage2' (or it predates the run record)")
    rec = json.loads(path.read_text())
    if rec.get("schema") != RUN_SCHEMA:
        raise ValueError(f"{path}: unknown schema {rec.get('schema')!r} (expected {RUN_SCHEMA})")
    return rec


def record_run_inputs(run_dir, inputs, profile: str) -> Path:
    """Write the run record of a model trained on ``inputs`` (a :class:`~emi_lib.train.inputs.Stage2Inputs`, as
    the notebooks build them) into ``run_dir``: the same ``inputs.json`` + ``standardizer.npz`` as the CLI's."""
    s1 = inputs.stage1
    rec = run_record(root=inputs.root, store_dir=inputs.raw_store.root, streams=inputs.streams, with_raw=inputs.with_raw,
                     stage1=s1.path if s1 is not None else None,
                     stage1_inputs=("aligned+raw" if inputs.with_raw else "aligned") if s1 is not None else None,
                     priors=True, standardize=inputs.standardizer is not None, packed=None, profile=profile,
                     argv=["notebook"], text_pair=inputs.text_pair)
    return write_run_record(run_dir, rec, inputs.standardizer)


def check_run_inputs(run_dir, inputs) -> str | None:
    """Why the model in ``run_dir`` does not fit ``inputs`` (another data root or this one regenerated, other
    streams, another stage-1 run, other z-scoring or text), or None when it does. A folder without a run record
    cannot be checked: that is a reason too."""
    try:
        rec = read_run_record(run_dir)
    except (FileNotFoundError, ValueError) as err:
        return f"the model's inputs are unknown: {err}"
    mine = inputs.provenance()
    try:
        check_same_root(rec.get("data"), mine["data"], f"the model in {run_dir}")
    except ProvenanceError as err:
        return str(err)
    s1 = inputs.stage1
    want = {"streams": mine["streams"], "with_raw": {m: list(p) for m, p in inputs.with_raw.items()} if inputs.with_raw
            else None, "stage1": str(Path(s1.path).resolve()) if s1 is not None else None, "text": mine["text"],
            "standardizer": STD_NAME if mine["standardized"] else None}
    for key, value in want.items():
        if rec.get(key) != value:
            return f"the model in {run_dir} was trained on {key}={rec.get(key)}, these inputs have {value}"
    return None


def _same_source(rec: dict, root, store_dir, path: Path) -> None:
    if rec.get("data"):  # the data root's fingerprint: another root, or this one regenerated since, is refused
        check_same_root(rec["data"], root_fingerprint(root), f"the run {path.parent}")
    for what, given, key in (("data root", root, "data_root"), ("feature store", store_dir, "store_dir")):
        if Path(given).resolve() != Path(rec[key]):
            raise ValueError(f"{path} was trained on the {what} {rec[key]}, but {Path(given).resolve()} was given: "
                             "predict with the recorded one (or retrain)")
    now = split_fingerprints(root)
    changed = [s for s, h in rec["split_csv_sha1"].items() if now.get(s) != h]
    if changed:
        raise ValueError(f"{path} records split CSVs of {rec['data_root']} that differ from {Path(root).resolve()}'s "
                         f"now ({', '.join(str(Path(root) / SPLIT_CSV[s]) for s in changed)}): not the same data")


def predict_run(run_dir, split: str = "test", out=None, root=None, store_dir=None, batch_size: int = 64,
                device: str = "cpu") -> tuple[Path, dict]:
    """Predict ``split`` with the best weights of a ``launch stage2`` run folder (module docstring); returns
    ``(csv path, provenance dict)``. Call it on one process (it writes)."""
    import pandas as pd

    from emi_lib.data import DataRoot
    from emi_lib.data.labels import HIDDEN_LABELS
    from emi_lib.eval.metrics import challenge_score
    from emi_lib.eval.submission import score_submission, validate_submission, write_submission
    from emi_lib.features.store import FeatureStore
    from emi_lib.train.inputs import Standardizer, build_split
    from emi_lib.train.stage2 import load_run, predict

    run_dir = Path(run_dir)
    rec = read_run_record(run_dir)
    root = Path(rec["data_root"] if root is None else root)
    store_dir = Path(rec["store_dir"] if store_dir is None else store_dir)
    _same_source(rec, root, store_dir, run_dir / RUN_NAME)
    data, raw_store = DataRoot(root), FeatureStore(store_dir)
    if split not in data.available_splits():
        raise ValueError(f"{root} has no {split} split ({root / SPLIT_CSV[split]} does not exist)")
    streams = {m: tuple(p) for m, p in rec["streams"].items()}
    with_raw = {m: tuple(p) for m, p in rec["with_raw"].items()} if rec["with_raw"] else None
    store = raw_store
    if rec["stage1"]:  # aligned streams live in the store the stage-1 run exported into
        s1 = json.loads(Path(rec["stage1"]).read_text())
        store = FeatureStore(s1["store_dir"])
    ids = data.ids(split)
    for pair in streams.values():
        check_coverage(store, pair, split, ids, rec["packed"])
    for pair in (with_raw or {}).values():
        check_coverage(raw_store, pair, split, ids)
    labels = data.split(split) if split != "test" else None
    text_pair = tuple(rec["text"]) if rec.get("text") else None
    d = build_split(root, store, streams, split, raw_store=raw_store, labels=labels, ids=ids, with_raw=with_raw,
                    text_pair=text_pair, priors=rec["priors"], packed=rec["packed"])
    if rec["standardizer"]:
        Standardizer.load(run_dir / rec["standardizer"]).apply(d)
    model, cfg = load_run(run_dir, "best", device=device)
    pred, _, extras = predict(model, d, batch_size=batch_size)
    out = Path(out) if out else run_dir / ("submission.csv" if split == "test" else f"{split}_predictions.csv")
    info = {"run_dir": str(run_dir.resolve()), "checkpoint": str((run_dir / "best.pt").resolve()),
            "data_root": str(root.resolve()), "store_dir": str(store_dir.resolve()), "split": split, "n": len(pred),
            "lacking": extras["missing"], "inputs": rec}
    if split == "test":
        write_submission(pred, out, root=root)
        validate_submission(out, root)
        if (root / HIDDEN_LABELS).exists():
            info["score"] = score_submission(out, root)
    else:
        write_submission(pred, out)
        got = {clip_stem(i) for i in pd.read_csv(out)["Filename"]}
        if got != set(ids):
            raise ValueError(f"{out}: {len(got ^ set(ids))} ids differ from the {split} split's")
        info["score"] = challenge_score(pred, labels.loc[pred.index])
    atomic_write_json(info, out.with_suffix(".json"))
    return out, info


__all__ = ["RUN_NAME", "RUN_SCHEMA", "STD_NAME", "check_run_inputs", "predict_run", "read_run_record",
           "record_run_inputs", "run_record", "split_fingerprints", "write_run_record"]
