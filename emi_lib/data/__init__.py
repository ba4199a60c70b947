"""Reading the Hume-Vidmimic2 layout safely: split tables, per-clip media and features.

>>> from emi_lib.data import DataRoot, read_split, load_features
>>> dr = DataRoot("/data/hume")                     # doctest: +SKIP
>>> dr.split("train").head()                        # doctest: +SKIP

Every problem with the data raises :class:`DataError` (a ValueError) naming the file and the
problem; ``on_error="skip"`` collects bad clips in a :class:`SkipReport` instead.
``python -m emi_lib.data.check ROOT`` audits a whole root (:func:`check_root`).
"""

from emi_lib.data.errors import DataError, SkipReport
from emi_lib.data.layout import MODALITIES, DataRoot, read_split
from emi_lib.data.media import (
    FaceCrops,
    load_audio,
    load_face_crops,
    load_transcript,
    load_video_frames,
    probe_video,
    read_face_crops,
)
from emi_lib.data.safe_load import load_features

__all__ = [
    "MODALITIES",
    "CheckReport",
    "DataError",
    "DataRoot",
    "FaceCrops",
    "SkipReport",
    "check_root",
    "load_audio",
    "load_face_crops",
    "load_features",
    "load_transcript",
    "load_video_frames",
    "probe_video",
    "read_face_crops",
    "read_split",
]


def __getattr__(name: str):
    # Imported lazily so that ``python -m emi_lib.data.check`` does not find the module
    # already imported by its package (runpy's RuntimeWarning).
    if name in ("check_root", "CheckReport"):
        from emi_lib.data import check

        return getattr(check, name)
    raise AttributeError(f"module 'emi_lib.data' has no attribute {name!r}")
