"""Draws a 96x96 grayscale mouth-region video from an articulatory track (see visemes.PARAMS).

The picture is a mouth-centred crop as lip-reading pipelines make from real faces (LRS3's 96x96
crops): skin with a per-speaker texture, nostrils and nasolabial folds, upper and lower lips whose
shape follows the track (opening, width, rounding, lip press, lower lip tucked under the upper
teeth), the dark mouth interior with upper and lower teeth and the tongue, and a crease below the
lower lip that moves with the jaw. Every edge is drawn with sub-pixel anti-aliasing (coverage from
the signed distance to the edge), all frames at once with numpy.

Per speaker (`Appearance`): skin tone and texture, stubble, lip tone and thickness, mouth size and
position, teeth and tongue brightness, camera blur and noise, articulation strength, head-motion
amplitude. Per utterance: smooth head motion (translation, rotation, scale), lighting drifts
(gain and a moving gradient), sensor noise.
"""
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

import cv2
import numpy as np

from espnet_omni_avsr.prep.avgrid.visemes import PARAMS

SIZE = 96
_P = {name: i for i, name in enumerate(PARAMS)}


@dataclass(frozen=True)
class Appearance:
    skin: float = 140.0  # mean skin gray level
    texture_amp: float = 6.0  # skin texture contrast
    texture_seed: int = 0
    stubble: float = 0.0  # 0..1
    lip_contrast: float = 30.0  # lips darker than skin by this much
    lip_highlight: float = 12.0  # light catching the lower lip
    upper_lip: float = 4.5  # lip thickness at the centre, px
    lower_lip: float = 6.0
    half_width: float = 17.0  # mouth half width at rest, px
    max_open: float = 15.0  # inner opening at open=1, px
    cx: float = 48.0  # mouth centre
    cy: float = 54.0
    interior: float = 22.0
    teeth: float = 200.0
    tongue: float = 95.0
    blur: float = 0.5  # Gaussian sigma, px (0: none)
    noise: float = 2.0  # sensor noise sigma, gray levels
    articulation: float = 1.0  # scales the opening (mumbler < 1 < hyper-articulator)
    motion: float = 1.0  # head-motion amplitude scale
    light_tilt: float = 0.15  # strength of the lighting gradient

    @classmethod
    def sample(cls, rng: np.random.Generator) -> "Appearance":
        """A random speaker; draws are in a fixed order so one seed gives one face."""
        u = lambda lo, hi: float(rng.uniform(lo, hi))  # noqa: E731
        skin = u(75, 195)
        half_width = u(18.0, 25.0)
        return cls(
            skin=skin,
            texture_amp=u(2.5, 11.0),
            texture_seed=int(rng.integers(2**31)),
            stubble=float(rng.uniform(0.3, 1.0)) if rng.random() < 0.3 else 0.0,
            lip_contrast=u(15.0, 55.0) * (skin / 140.0) ** 0.5,
            lip_highlight=u(4.0, 20.0),
            upper_lip=u(3.5, 8.0),
            lower_lip=u(5.0, 10.5),
            half_width=half_width,
            max_open=half_width * u(0.6, 0.85),
            cx=48.0 + u(-2.0, 2.0),
            cy=54.0 + u(-2.5, 2.5),
            interior=u(8.0, 38.0),
            teeth=min(245.0, skin + u(25.0, 90.0)),
            tongue=skin * u(0.45, 0.8),
            blur=u(0.0, 1.1),
            noise=u(0.5, 2.2),
            articulation=u(0.8, 1.2),
            motion=u(0.3, 1.2),
            light_tilt=u(0.0, 0.3),
        )


@lru_cache(maxsize=64)
def _skin_image(app: Appearance) -> np.ndarray:
    """Static face: (SIZE, SIZE) float32 skin with texture, shading, stubble and nostrils."""
    rng = np.random.default_rng(app.texture_seed)
    coarse = cv2.GaussianBlur(rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), 6.0)
    fine = cv2.GaussianBlur(rng.standard_normal((SIZE, SIZE)).astype(np.float32), (0, 0), 0.8)
    coarse /= coarse.std() + 1e-6
    fine /= fine.std() + 1e-6
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    img = app.skin + app.texture_amp * (0.7 * coarse + 0.5 * fine)
    # rounded face: darker towards the sides and the bottom corners
    img *= 1.0 - 0.18 * ((x - app.cx) / 60.0) ** 2 - 0.08 * np.clip((y - app.cy) / 50.0, 0, None) ** 2
    if app.stubble > 0:
        around_mouth = np.exp(-(((x - app.cx) / 34.0) ** 2) - ((y - app.cy - 4.0) / 30.0) ** 2)
        dots = np.clip(rng.standard_normal((SIZE, SIZE)).astype(np.float32), 0, None)
        img -= app.stubble * around_mouth * (18.0 + 22.0 * dots)
    # folds from the nose wings past the mouth corners
    for side in (-1.0, 1.0):
        fold_x = app.cx + side * (app.half_width * 1.3 + 0.28 * (app.cy - y))
        fade = np.clip((y - (app.cy - 30.0)) / 10.0, 0, 1) * np.clip((app.cy + 14.0 - y) / 8.0, 0, 1)
        img -= (0.07 * app.skin) * fade * np.exp(-(((x - fold_x) / 1.8) ** 2))
    # nostrils and the shadow under the nose
    nose_y = app.cy - 2.3 * app.half_width - 4.0
    for side in (-1.0, 1.0):
        nx = app.cx + side * 0.42 * app.half_width
        d = ((x - nx) / 3.6) ** 2 + ((y - nose_y) / 2.0) ** 2
        img -= 0.55 * app.skin * np.exp(-d)
    img -= 0.12 * app.skin * np.exp(-(((x - app.cx) / 14.0) ** 2) - ((y - nose_y - 3.0) / 3.0) ** 2)
    return img.astype(np.float32)


def _smooth_noise(rng: np.random.Generator, num: int, fps: float, components: int = 3) -> np.ndarray:
    """(num,) smooth random signal with unit-ish amplitude: a few slow sinusoids."""
    t = np.arange(num) / fps
    out = np.zeros(num)
    for _ in range(components):
        freq, phase, amp = rng.uniform(0.1, 1.2), rng.uniform(0, 2 * np.pi), rng.uniform(0.3, 1.0)
        out += amp * np.sin(2 * np.pi * freq * t + phase)
    return (out / components * 1.6).astype(np.float32)


def _mouth_box(app: Appearance) -> Tuple[int, int, int, int]:
    """Rows and columns (r0, r1, c0, c1) that the moving parts can reach (before head motion)."""
    half = 1.2 * app.half_width + 4.0
    up = 0.3 * 1.25 * app.max_open * app.articulation + 1.4 * app.upper_lip + 4.0
    down = 0.7 * 1.25 * app.max_open * app.articulation + 1.3 * app.lower_lip + 13.0
    r0, r1 = int(max(0, np.floor(app.cy - up))), int(min(SIZE, np.ceil(app.cy + down)))
    c0, c1 = int(max(0, np.floor(app.cx - half))), int(min(SIZE, np.ceil(app.cx + half)))
    return r0, r1, c0, c1


def render_mouth(track: np.ndarray, app: Appearance, rng: np.random.Generator, fps: float = 25.0) -> np.ndarray:
    """Draws one utterance.

    Args:
        track: (T, len(PARAMS)) articulatory parameters per frame, each in [0, 1].
        app: the speaker's appearance.
        rng: per-utterance randomness (motion, lighting, noise).
    Returns:
        (T, SIZE, SIZE) uint8 frames.
    """
    track = np.clip(np.asarray(track, dtype=np.float32), 0.0, 1.0)
    num = track.shape[0]
    col = lambda name: track[:, _P[name]][:, None, None]  # (T, 1, 1)  # noqa: E731
    opening, width, rnd = col("open"), col("width"), col("round")
    t_up, t_low, tongue, tuck, press = col("teeth_upper"), col("teeth_lower"), col("tongue"), col("tuck"), col("press")

    # the moving parts are drawn inside the box they can reach, all frames at once
    r0, r1, c0, c1 = _mouth_box(app)
    x = np.arange(c0, c1, dtype=np.float32)[None, None, :]  # (1, 1, w)
    y = np.arange(r0, r1, dtype=np.float32)[None, :, None]  # (1, h, 1)
    cx, cy = app.cx, app.cy

    hw = app.half_width * (0.82 + 0.36 * width) * (1.0 - 0.2 * rnd)  # outer half width
    iw = hw * (0.9 - 0.3 * rnd)  # inner opening half width
    h_open = app.max_open * app.articulation * opening * (1.0 + 0.25 * rnd)
    thick_up = app.upper_lip * (1.0 + 0.4 * rnd - 0.35 * press)
    thick_low = app.lower_lip * (1.0 + 0.3 * rnd - 0.35 * press - 0.45 * tuck)

    u = (x - cx) / hw  # (T, 1, w)
    v = (x - cx) / iw
    q = 2.0 + 1.5 * (1.0 - rnd)  # rounded openings are elliptic, spread ones flatter
    prof_in = np.sqrt(np.clip(1.0 - np.abs(v) ** q, 0.0, 1.0))
    prof_out = np.clip(1.0 - u**2, 0.0, 1.0) ** 0.6
    bow = 1.0 - 0.28 * np.exp(-((u / 0.12) ** 2)) + 0.12 * np.exp(-(((np.abs(u) - 0.28) / 0.14) ** 2))
    on_lips = (prof_out > 0).astype(np.float32)

    lip_line = cy - 1.2 * tuck  # the lower lip rises under the upper teeth for f / v
    y_ui = lip_line - 0.3 * h_open * prof_in  # inner edges (T, 1, w)
    y_li = lip_line + 0.7 * h_open * prof_in
    y_uo = y_ui - thick_up * prof_out * bow  # outer edges
    y_lo = y_li + thick_low * prof_out**0.8

    def band(top, bottom):  # coverage of rows between two edges, anti-aliased
        return np.clip(y - top + 0.5, 0.0, 1.0) * np.clip(bottom - y + 0.5, 0.0, 1.0)

    skin_full = _skin_image(app)
    skin = skin_full[r0:r1, c0:c1][None]  # (1, h, w)
    img = np.broadcast_to(skin, (num,) + skin.shape[1:]).copy()

    # the crease under the lower lip follows the jaw
    crease_y = cy + 0.7 * h_open + app.lower_lip + 4.0
    img -= (0.1 * app.skin * np.exp(-(((y - crease_y) / 2.2) ** 2))) * np.exp(-(((x - cx) / (1.1 * hw)) ** 2))

    # lips
    lower_mid = y_li + 0.45 * thick_low * prof_out
    highlight = np.clip(1.0 - np.abs(y - lower_mid) / (0.5 * thick_low + 0.7), 0.0, 1.0) * (app.lip_highlight * prof_out)
    lip_col = skin - app.lip_contrast * (1.0 + 0.25 * (y < lip_line)) + highlight  # upper lip shaded by the nose
    a_mouth = band(y_uo, y_lo) * on_lips
    img += a_mouth * (lip_col - img)

    # interior, teeth, tongue
    a_in = band(y_ui, y_li) * np.clip((1.0 - np.abs(v)) * iw, 0.0, 1.0)
    img += a_in * (app.interior * (1.0 + 0.4 * opening) - img)
    teeth_span = np.clip((0.85 - np.abs(v)) * iw, 0.0, 1.0) * (0.88 + 0.12 * np.cos(np.pi * (x - cx) / 2.6))
    teeth_col = app.teeth * (0.7 + 0.3 * np.clip(h_open / 6.0, 0.0, 1.0))
    a_teeth = a_in * teeth_span
    a_tu = a_teeth * np.clip(y_ui + t_up * (2.5 + 0.35 * h_open) - y + 0.5, 0.0, 1.0)
    img += a_tu * (teeth_col - img)
    a_tl = a_teeth * np.clip(y - (y_li - t_low * (1.5 + 0.25 * h_open)) + 0.5, 0.0, 1.0)
    img += a_tl * (0.85 * teeth_col - img)
    t_rx = iw * 0.65 + 0.5
    t_ry = tongue * (0.5 * h_open + 1.5) + 1e-3
    t_cy = lip_line + 0.7 * h_open + 0.3 * t_ry
    t_dist = 1.0 - ((x - cx) / t_rx) ** 2 - ((y - t_cy) / t_ry) ** 2
    a_tg = a_in * np.clip(t_dist * t_ry * 0.8, 0.0, 1.0) * (tongue > 0.02)
    img += a_tg * (app.tongue - img)

    # the dark seam between closed lips (fainter when pressed) and the mouth corners
    closed = np.clip(1.0 - (y_li - y_ui), 0.0, 1.0) * on_lips
    seam = np.clip(1.0 - np.abs(y - 0.5 * (y_ui + y_li)) / 1.2, 0.0, 1.0)
    img -= (app.lip_contrast * closed * (0.35 - 0.15 * press)) * seam
    corner_x = np.exp(-(((np.abs(x - cx) - hw) / 1.5) ** 2))
    img -= (0.25 * app.lip_contrast * np.exp(-(((y - lip_line) / 1.5) ** 2))) * corner_x

    # per frame: lighting (a gain and a gradient drifting over the utterance), head motion
    # (rotation and scale about the mouth, translation), camera blur, sensor noise
    ramp = (np.arange(SIZE, dtype=np.float32) - SIZE / 2) / (SIZE / 2)
    gain = 1.0 + 0.06 * _smooth_noise(rng, num, fps) + rng.uniform(-0.12, 0.12)
    angle = rng.uniform(0, 2 * np.pi) + 0.4 * _smooth_noise(rng, num, fps)
    gx, gy = app.light_tilt * gain * np.cos(angle), app.light_tilt * gain * np.sin(angle)
    m = app.motion
    tx, ty = 2.0 * m * _smooth_noise(rng, num, fps), 1.6 * m * _smooth_noise(rng, num, fps)
    rot, scale = 3.0 * m * _smooth_noise(rng, num, fps), 1.0 + 0.03 * m * _smooth_noise(rng, num, fps)
    bank = _noise_bank()
    pick = rng.integers(0, len(bank), num)
    offset = rng.integers(0, bank.shape[1] - SIZE + 1, (num, 2))
    out = np.empty((num, SIZE, SIZE), dtype=np.uint8)
    canvas = np.empty((SIZE, SIZE), dtype=np.float32)
    for i in range(num):
        canvas[:] = skin_full
        canvas[r0:r1, c0:c1] = img[i]
        canvas *= (gain[i] + gx[i] * ramp)[None, :] + (gy[i] * ramp)[:, None]
        mat = cv2.getRotationMatrix2D((cx, cy), float(rot[i]), float(scale[i]))
        mat[:, 2] += (tx[i], ty[i])
        frame = cv2.warpAffine(canvas, mat, (SIZE, SIZE), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101)
        if app.blur > 0.05:
            frame = cv2.GaussianBlur(frame, (0, 0), app.blur)
        oy, ox = offset[i]
        frame += app.noise * bank[pick[i], oy : oy + SIZE, ox : ox + SIZE]
        frame += 0.5
        np.clip(frame, 0, 255, out=frame)
        out[i] = frame
    return out


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """(64, 128, 128) float32 unit Gaussian noise; frames take random crops (cheaper than fresh noise)."""
    return np.random.default_rng(20240229).standard_normal((64, 128, 128), dtype=np.float32)


def render_blank(num: int, level: Optional[float] = 0.0) -> np.ndarray:
    """(num, SIZE, SIZE) uint8 constant frames (a lost face track), for corrupt-input tests."""
    return np.full((num, SIZE, SIZE), int(level or 0), dtype=np.uint8)
