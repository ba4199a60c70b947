r"""Face channel: action-unit tracks that follow z, and a small numpy face renderer.

Action units (``FACE_AUS``) per frame t, for a clip with latent z and subject s:

.. math::

    a_k(t) = \mathrm{rest}_{s,k} + g^{face}_s\,\big((W_{face} z)_k + \eta_k\big)\,\mathrm{env}_k(t)
             + d_k(t) + \tau_k\,\mathrm{talk}(t) + n_k(t)

* ``W_face`` (config ``face_weights``, 8 x 6) overlaps emotions: the smile comes from Joy,
  Amusement and Excitement with different weights, the brow furrow from Determination and
  Empathic Pain; Amusement/Excitement/Joy have large weights (face-dominant),
  Admiration/Determination/Empathic Pain small ones.
* env_k(t): slow onset-apex-offset envelope (macro dynamics): 0 until t_on ~ U(0.05, 0.35) D,
  raised-cosine rise over 0.3-1.0 s, apex, fall over 0.3-1.0 s from t_off ~ U(0.6, 0.95) D,
  with per-AU timing jitter. The first frames are near neutral (a temporal model can use
  them as the subject's baseline; a clip average cannot).
* eta_k ~ N(0, face_clip_noise_sd^2); n_k(t): AR(1) noise (face_frame_noise_sd);
  d_k(t): with prob ``face_distractor_p`` a z-independent polite smile or brow flash, and with
  prob ``face_tension_p`` a z-independent frown, lip press or lip-corner pull (so the small
  Determination / Empathic Pain face cues are ambiguous: the face carries them only weakly);
  talk(t): the voice's syllable envelope moves the mouth (``talk_mouth_gain``).
* head motion a_8 sets the amplitude of fast head jitter and roll; a Duchenne smile narrows
  the eyes (overlaps with eye widening); blinks every 2-5 s.

The renderer draws, with anti-aliased signed-distance masks on a ``frame_size`` square:
background, hair, head ellipse with shading, eyes (sclera, iris, lids), brows (segments), nose
shadow, and a parametric mouth (corner height, width, opening, lip thickness).
"""

from __future__ import annotations

import numpy as np

from emi_lib.data.synth.config import FACE_AUS, SynthConfig
from emi_lib.data.synth.latent import Subject

AU = {name: i for i, name in enumerate(FACE_AUS)}


def _envelope(t: np.ndarray, on: float, rise: float, off: float, fall: float) -> np.ndarray:
    up = np.clip((t - on) / rise, 0.0, 1.0)
    down = np.clip((t - off) / fall, 0.0, 1.0)
    return 0.5 * (1 - np.cos(np.pi * up)) * 0.5 * (1 + np.cos(np.pi * down))


def _ar1(rng: np.random.Generator, n: int, k: int, rho: float, sd: float) -> np.ndarray:
    e = rng.normal(0.0, sd * np.sqrt(1 - rho * rho), (n, k))
    out = np.empty((n, k))
    out[0] = rng.normal(0.0, sd, k)
    for i in range(1, n):
        out[i] = rho * out[i - 1] + e[i]
    return out


def face_tracks(cfg: SynthConfig, subj: Subject, z: np.ndarray, n_frames: int, talk: np.ndarray,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Action units (T, 8), pose (dx, dy, roll) and blink (T,) of one clip (see module docstring)."""
    t = np.arange(n_frames) / cfg.fps
    dur = n_frames / cfg.fps
    w = np.asarray(cfg.face_weights, dtype=float)
    amp = subj.face_gain * (w @ z + rng.normal(0.0, cfg.face_clip_noise_sd, len(FACE_AUS)))
    on = rng.uniform(0.05, 0.35) * dur
    off = max(on + 0.5, rng.uniform(0.6, 0.95) * dur)
    rise, fall = rng.uniform(0.3, 1.0), rng.uniform(0.3, 1.0)
    au = np.empty((n_frames, len(FACE_AUS)))
    for k in range(len(FACE_AUS)):
        j_on, j_off = rng.normal(0, 0.15, 2)
        au[:, k] = amp[k] * _envelope(t, on + j_on, rise, off + j_off, fall)
    au += np.asarray(subj.rest)[None, :]
    au += _ar1(rng, n_frames, len(FACE_AUS), 0.8, cfg.face_frame_noise_sd)
    if rng.random() < cfg.face_distractor_p:  # z-independent polite smile or brow flash
        k = AU["smile"] if rng.random() < 0.6 else AU["brow_raise"]
        c, width = rng.uniform(0, dur), rng.uniform(0.4, 1.2)
        au[:, k] += rng.uniform(0.2, 0.45) * np.exp(-0.5 * ((t - c) / (width / 2)) ** 2)
    if rng.random() < cfg.face_tension_p:  # z-independent tension: concentration frown, pressed lips...
        k = AU[("brow_furrow", "lip_press", "lip_corner_depress")[int(rng.integers(3))]]
        t_on = rng.uniform(0, 0.6) * dur
        au[:, k] += rng.uniform(*cfg.face_tension_amp) * _envelope(t, t_on, 0.5, t_on + rng.uniform(0.8, 3.0), 0.5)
    au[:, AU["mouth_open"]] += cfg.talk_mouth_gain * talk * rng.uniform(0.6, 1.4)
    au = np.clip(au, -0.3, 1.6)
    h = np.clip(au[:, AU["head_motion"]], 0.0, None)
    fast = rng.normal(0.0, 1.0, (n_frames, 3))
    slow = _ar1(rng, n_frames, 3, 0.9, 1.0)
    scale = cfg.crop_size / 96.0
    dx = scale * (1.2 * slow[:, 0] + 3.5 * h * fast[:, 0])
    dy = scale * (0.8 * slow[:, 1] + 3.0 * h * fast[:, 1])
    roll = 0.03 * slow[:, 2] + 0.10 * h * fast[:, 2]
    blink = np.zeros(n_frames)
    tb = rng.uniform(0.3, 2.5)
    while tb < dur:
        i = int(tb * cfg.fps)
        if i < n_frames:
            blink[i] = 1.0
        tb += rng.uniform(2.0, 5.0)
    return {"au": au, "dx": dx, "dy": dy, "roll": roll, "blink": blink}


def _cov(d: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a signed distance in pixels (negative = inside)."""
    return np.clip(0.5 - d, 0.0, 1.0)


def _paint(img: np.ndarray, alpha: np.ndarray, color) -> None:
    a = alpha[..., None]
    img *= 1.0 - a
    img += a * np.asarray(color, dtype=np.float32)


def _ellipse(u, v, cx, cy, rx, ry):
    return (np.sqrt(((u - cx) / rx) ** 2 + ((v - cy) / ry) ** 2) - 1.0) * min(rx, ry)


def _segment(u, v, ax, ay, bx, by, half_thick):
    px, py = u - ax, v - ay
    ex, ey = bx - ax, by - ay
    tt = np.clip((px * ex + py * ey) / (ex * ex + ey * ey), 0.0, 1.0)
    return np.hypot(px - tt * ex, py - tt * ey) - half_thick


class FaceRenderer:
    """Renders frames of one subject; coordinate grids are built once per frame size."""

    def __init__(self, cfg: SynthConfig, subj: Subject):
        self.cfg, self.s = cfg, subj
        n = cfg.frame_size
        yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
        self.x, self.y = xx + 0.5, yy + 0.5
        grad = (0.85 + 0.3 * self.y / n)[..., None]
        self.background = (grad * np.asarray(subj.background, dtype=np.float32)[None, None, :]).astype(np.float32)

    def center(self, dx: float, dy: float) -> tuple[float, float]:
        n = self.cfg.frame_size
        return n / 2 + self.s.offset[0] + dx, n / 2 + self.s.offset[1] + dy

    def _win(self, x0: float, y0: float, x1: float, y1: float):
        """Frame slices covering the face-local box [x0, x1] x [y0, y1] (under the current pose)."""
        cx, cy, c, sn = self._pose
        xs = np.array([x0, x1, x0, x1])
        ys = np.array([y0, y0, y1, y1])
        fx = cx + xs * c - ys * sn
        fy = cy + xs * sn + ys * c
        n = self.cfg.frame_size
        r0, r1 = max(int(fy.min()) - 2, 0), min(int(fy.max()) + 3, n)
        c0, c1 = max(int(fx.min()) - 2, 0), min(int(fx.max()) + 3, n)
        return slice(r0, max(r1, r0)), slice(c0, max(c1, c0))

    def frame(self, au: np.ndarray, dx: float, dy: float, roll: float, blink: float,
              face_visible: bool = True, person_visible: bool = True) -> np.ndarray:
        """One RGB float32 frame in [0, 1] (before sensor noise and occlusion)."""
        s, img = self.s, self.background.copy()
        if not person_visible:
            return img
        cx, cy = self.center(dx, dy)
        c, sn = float(np.cos(roll)), float(np.sin(roll))
        self._pose = (cx, cy, c, sn)
        rx, ry = s.head_rx, s.head_ry
        ys, xs = self._win(-rx * 1.12, -ry * 1.12, rx * 1.12, ry * 1.05)
        self._u = (self.x - cx) * c + (self.y - cy) * sn
        self._v = -(self.x - cx) * sn + (self.y - cy) * c
        u, v, sub = self._u[ys, xs], self._v[ys, xs], img[ys, xs]
        _paint(sub, _cov(_ellipse(u, v, 0, -0.06 * ry, rx * 1.1, ry * 1.04)), s.hair)
        if not face_visible:  # turned away: the back of the head
            _paint(sub, _cov(_ellipse(u, v, 0, 0, rx, ry)), np.asarray(s.hair) * 0.9)
            return img
        head = _cov(_ellipse(u, v, 0, 0, rx, ry))
        shade = np.clip(1.0 - 0.22 * (u / rx) ** 2 - 0.08 * (v / ry) ** 2, 0.6, 1.0)[..., None]
        sub *= 1.0 - head[..., None]
        sub += head[..., None] * shade * np.asarray(s.skin, dtype=np.float32)
        top = self._win(-rx, -ry, rx, -0.5 * ry)
        fringe = _cov(self._v[top] - (-0.68 * ry + 2.0 * np.sin(self._u[top] * 0.35)))
        _paint(img[top], fringe * _cov(_ellipse(self._u[top], self._v[top], 0, 0, rx, ry)), s.hair)
        a = {k: float(au[i]) for k, i in AU.items()}
        self._eyes(img, a, blink)
        self._brows(img, a)
        self._cheeks(img, a)
        nose_y = 0.5 * (s.eye_y + s.mouth_y) + 2.0
        w = self._win(-4, nose_y - 6, 4, nose_y + 6)
        _paint(img[w], 0.5 * _cov(_ellipse(self._u[w], self._v[w], 0, nose_y, 2.6, 4.5)), np.asarray(s.skin) * 0.72)
        self._mouth(img, a)
        return img

    def _eyes(self, img, a, blink):
        s = self.s
        smile = max(a["smile"], 0.0)
        open_h = s.eye_r * 0.62 * (1 + 0.7 * max(a["eye_widen"], -0.3)) * (1 - 0.4 * min(smile, 1.2)) * (1 - 0.9 * blink)
        open_h = max(open_h, 0.35)
        for side in (-1.0, 1.0):
            ex = side * s.eye_dx
            w = self._win(ex - 1.6 * s.eye_r, s.eye_y - open_h - 2, ex + 1.6 * s.eye_r, s.eye_y + open_h + 2)
            u, v, sub = self._u[w], self._v[w], img[w]
            sclera = _cov(_ellipse(u, v, ex, s.eye_y, 1.45 * s.eye_r, open_h))
            _paint(sub, sclera, (0.93, 0.93, 0.9))
            iris = _cov(np.hypot(u - ex, v - s.eye_y) - 0.58 * s.eye_r) * sclera
            _paint(sub, iris, (0.12, 0.1, 0.08))
            lid = _cov(np.abs(_ellipse(u, v, ex, s.eye_y, 1.45 * s.eye_r, open_h)) - 0.6) * (v < s.eye_y)
            _paint(sub, 0.8 * lid, np.asarray(s.skin) * 0.45)

    def _cheeks(self, img, a):
        """Cheek raise of a Duchenne smile: lighter, rosier cheeks (a large-area cue)."""
        s = self.s
        k = float(np.clip(a["smile"], 0.0, 1.2))
        if k < 0.05:
            return
        cy = 0.5 * (s.eye_y + s.mouth_y) + 1.0 - 2.0 * k
        color = np.minimum(np.asarray(s.skin) * np.array([1.18, 1.0, 0.98]) + 0.04, 1.0)
        for side in (-1.0, 1.0):
            cx = side * (s.eye_dx + 3.0)
            w = self._win(cx - 9, cy - 7, cx + 9, cy + 7)
            d = _ellipse(self._u[w], self._v[w], cx, cy, 7.5, 5.5)
            _paint(img[w], 0.75 * k * np.clip(-d / 3.0, 0.0, 1.0), color)

    def _brows(self, img, a):
        s = self.s
        sc = self.cfg.crop_size / 96.0
        base = s.eye_y - s.brow_gap - sc * 5.0 * a["brow_raise"] - sc * 1.5 * a["eye_widen"]
        fur = max(a["brow_furrow"], -0.2)
        color = np.asarray(s.hair) * 0.8
        for side in (-1.0, 1.0):
            inner_x = side * (s.eye_dx - 1.1 * s.eye_r - sc * 2.2 * fur)
            outer_x = side * (s.eye_dx + 1.6 * s.eye_r)
            inner_y = base + sc * 4.5 * fur
            outer_y = base - sc * 0.8
            w = self._win(min(inner_x, outer_x) - 3, min(inner_y, outer_y) - 3,
                          max(inner_x, outer_x) + 3, max(inner_y, outer_y) + 3)
            d = _segment(self._u[w], self._v[w], inner_x, inner_y, outer_x, outer_y, sc * (1.2 + 0.3 * max(fur, 0)))
            _paint(img[w], _cov(d), color)

    def _mouth(self, img, a):
        s = self.s
        sc = self.cfg.crop_size / 96.0
        smile, dep = a["smile"], max(a["lip_corner_depress"], -0.2)
        press, op = float(np.clip(a["lip_press"], -0.2, 1.2)), max(a["mouth_open"], 0.0)
        w = s.mouth_w * (1 + 0.22 * smile - 0.18 * press + 0.08 * op)
        bend = sc * (8.0 * smile - 4.5 * dep)
        opening = sc * 11.0 * op
        win = self._win(-w - 2, s.mouth_y - abs(bend) - 0.3 * opening - 6, w + 2, s.mouth_y + abs(bend) + 0.7 * opening + 6)
        u, v, sub = self._u[win], self._v[win], img[win]
        q = np.clip(u / w, -1.0, 1.0)
        line = s.mouth_y - bend * (q * q - 0.3)
        op_q = opening * (1 - q * q)
        top_in, bot_in = line - 0.3 * op_q, line + 0.7 * op_q
        t = s.lip_t * (1 - 0.6 * press) + 0.4
        d_h = np.abs(u) - w
        outer = np.maximum(np.maximum(top_in - t * (1 - 0.4 * q * q) - v, v - (bot_in + t * (1 - 0.3 * q * q))), d_h)
        _paint(sub, _cov(outer), s.lip_color)
        if op > 0.04:
            inner = np.maximum(np.maximum(top_in - v, v - bot_in), d_h + 0.5)
            _paint(sub, _cov(inner), (0.1, 0.04, 0.05))
            teeth = np.maximum(np.maximum(top_in - v, v - (top_in + 0.3 * (bot_in - top_in))), d_h + 1.5)
            _paint(sub, _cov(teeth) * min(1.0, op * 2), (0.88, 0.86, 0.8))


def occluder_box(cfg: SynthConfig, subj: Subject, rng: np.random.Generator) -> tuple[tuple[float, float, float, float], tuple]:
    """A rectangle in face coordinates (u0, v0, u1, v1) hiding the mouth, the brows/eyes or one side."""
    rx, ry = subj.head_rx, subj.head_ry
    kind = rng.choice(["mouth", "eyes", "side"], p=[0.45, 0.3, 0.25])
    if kind == "mouth":
        box = (-rx * rng.uniform(0.6, 1.0), subj.mouth_y - rng.uniform(6, 12), rx * rng.uniform(0.6, 1.0), ry * 1.05)
    elif kind == "eyes":
        box = (-rx * 1.05, subj.eye_y - subj.brow_gap - rng.uniform(5, 9), rx * 1.05, subj.eye_y + rng.uniform(4, 8))
    else:
        side = rng.choice([-1.0, 1.0])
        box = (min(0.0, side * rx * 1.05), -ry * 0.6, max(0.0, side * rx * 1.05), ry * 1.05)
        box = (box[0] - 4 * (side > 0), box[1], box[2] + 4 * (side < 0), box[3])
    color = tuple(float(c) for c in rng.uniform(0.15, 0.85, 3))
    return tuple(float(b) for b in box), color


def paint_occluder(img: np.ndarray, renderer: FaceRenderer, box, color, dx: float, dy: float) -> float:
    """Paint the occluder (it moves with the head, not its roll); returns the hidden share of the face."""
    cx, cy = renderer.center(dx, dy)
    x, y = renderer.x - cx, renderer.y - cy
    d = np.maximum(np.maximum(box[0] - x, x - box[2]), np.maximum(box[1] - y, y - box[3]))
    m = _cov(d)
    tex = 0.9 + 0.1 * np.sin(0.7 * renderer.x + 0.3 * renderer.y)
    img *= 1.0 - m[..., None]
    img += (m * tex)[..., None] * np.asarray(color, dtype=np.float32)
    s = renderer.s
    face = _ellipse(x, y, 0, 0, s.head_rx, s.head_ry) < 0
    return float((m[face] > 0.5).mean()) if face.any() else 0.0
