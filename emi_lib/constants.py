"""Constants of the Hume-Vidmimic2 task that every module shares."""

#: The six target intensities, in the challenge's column order.
EMOTIONS: tuple[str, ...] = (
    "Admiration",
    "Amusement",
    "Determination",
    "Empathic Pain",
    "Excitement",
    "Joy",
)

#: The exact header of every split CSV and of a submission.
HEADER: tuple[str, ...] = ("Filename", *EMOTIONS)

#: Audio sample rate of the challenge's audio/ folder; every loader returns this rate.
SAMPLE_RATE: int = 16_000

#: Splits and the CSV that lists each, relative to the data root.
SPLIT_CSV: dict[str, str] = {
    "train": "train_split.csv",
    "valid": "valid_split.csv",
    "test": "test_data/test_split.csv",
}


def clip_stem(clip_id: int | str) -> str:
    """File stem of a clip: the integer id zero-padded to 5 digits (``12660 -> '12660'``, ``7 -> '00007'``)."""
    return f"{int(clip_id):05d}"


def clip_key(clip_id) -> str:
    """A clip id in the workbench's one form, for dict keys and DataFrame indexes: an integer or a string of
    digits is its :func:`clip_stem` (``7``, ``"7"``, ``"00007"`` -> ``"00007"``); any other id (e.g. a test's
    ``"a"``) is kept as the string it is, never refused."""
    s = str(clip_id).strip()
    return clip_stem(s) if s.isdigit() else str(clip_id)
