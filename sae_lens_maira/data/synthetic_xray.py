"""Synthetic chest radiographs whose visible findings follow a report's labels.

No real chest X-rays ship on PyPI, so the small default pairs real Open-I report text with
images rendered here. The renderer is a tiny projection model: soft-tissue, bone, air, fluid and
metal thicknesses are summed along the beam into an attenuation map ``A`` and displayed as
``1 - exp(-mu A)`` (dense = white), then blurred, windowed and given quantum noise.

What a reader should see, and a test measures from the pixels:

* **cardiomegaly**: cardiothoracic ratio (heart width / internal thoracic width) 0.56-0.68
  instead of ~0.42 (0.36-0.48); on the lateral view the heart fills the retrosternal space and
  reaches back towards the spine.
* **pleural effusion** (left, right or bilateral; small, moderate or large): homogeneous basal
  opacity with a meniscus rising laterally, blunting the costophrenic angle and hiding the
  hemidiaphragm; on the lateral view the posterior costophrenic sulcus fills in.
* **devices**: central venous catheter (jugular, subclavian or PICC), pacemaker generator with
  leads into the right atrium/ventricle, endotracheal tube, nasogastric tube. Lines are drawn
  2-3 px wide at the output size so they survive 14 px patching.

Anatomy (body habitus, lung volume, diaphragm height, heart size within its class, rib spacing,
breast shadows, vessels), exposure and noise vary per seed; the same seed gives identical pixels,
and one seed draws one patient for both views.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

#: Device kinds the renderer can draw.
DEVICE_KINDS = ("central_line", "pacemaker", "endotracheal_tube", "nasogastric_tube")
EFFUSION_SIDES = ("left", "right", "bilateral")
EFFUSION_SIZES = ("small", "moderate", "large")
#: The :class:`RenderSpec` field that says how a finding looks beyond present / absent (the
#: effusion's side, each device's kind), by the finding's label name.
FINDING_DETAILS = {"pleural_effusion": "effusion", "devices": "devices"}


def gaussian_filter(a: np.ndarray, sigma: float, **kwargs) -> np.ndarray:
    """scipy's Gaussian blur, imported on first use (scipy.ndimage takes ~0.2 s to import)."""
    from scipy.ndimage import gaussian_filter as _gf

    return _gf(a, sigma, **kwargs)


def stable_seed(key: str, seed: int = 0) -> int:
    """A seed from a string that is the same in every process (unlike ``hash``)."""
    digest = hashlib.sha256(f"{seed}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@dataclass(frozen=True)
class RenderSpec:
    """What the image must show. Build it from labels with :meth:`from_labels`."""

    cardiomegaly: bool = False
    effusion: str | None = None  # None, "left", "right" or "bilateral" (the patient's side)
    effusion_size: str = "moderate"
    devices: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.effusion is not None and self.effusion not in EFFUSION_SIDES:
            raise ValueError(
                f"effusion must be None or one of {EFFUSION_SIDES}, got {self.effusion!r}"
            )
        if self.effusion_size not in EFFUSION_SIZES:
            raise ValueError(
                f"effusion_size must be one of {EFFUSION_SIZES}, got {self.effusion_size!r}"
            )
        unknown = set(self.devices) - set(DEVICE_KINDS)
        if unknown:
            raise ValueError(f"unknown device kinds {sorted(unknown)}; known: {DEVICE_KINDS}")

    @property
    def labels(self) -> dict[str, bool]:
        return {
            "cardiomegaly": self.cardiomegaly,
            "pleural_effusion": self.effusion is not None,
            "devices": bool(self.devices),
        }

    @classmethod
    def from_labels(
        cls,
        labels: Mapping[str, bool],
        seed: int,
        *,
        effusion_side: str | None = None,
        device_kinds: tuple[str, ...] | None = None,
    ) -> RenderSpec:
        """Turn boolean labels into a concrete picture, drawing unspecified details from ``seed``.

        ``effusion_side`` and ``device_kinds`` are hints (e.g. from MeSH terms) used when the
        matching label is true; otherwise side, size and devices are drawn at random.
        """
        rng = np.random.default_rng([seed, 1])
        effusion = None
        size = str(rng.choice(EFFUSION_SIZES, p=[0.35, 0.45, 0.2]))
        if labels.get("pleural_effusion", False):
            effusion = effusion_side or str(rng.choice(EFFUSION_SIDES, p=[0.3, 0.3, 0.4]))
        devices: tuple[str, ...] = ()
        if labels.get("devices", False):
            if device_kinds:
                devices = tuple(dict.fromkeys(device_kinds))
            else:
                combos = [
                    ("pacemaker",),
                    ("central_line",),
                    ("central_line", "pacemaker"),
                    ("endotracheal_tube", "nasogastric_tube"),
                    ("endotracheal_tube", "nasogastric_tube", "central_line"),
                    ("nasogastric_tube",),
                ]
                devices = combos[int(rng.choice(len(combos), p=[0.3, 0.3, 0.1, 0.12, 0.1, 0.08]))]
        return cls(
            cardiomegaly=bool(labels.get("cardiomegaly", False)),
            effusion=effusion,
            effusion_size=size,
            devices=devices,
        )


@dataclass
class _Patient:
    """Anatomy and acquisition drawn once per seed, shared by both views (normalised units)."""

    cx: float
    hw: float  # internal thoracic half-width at the costophrenic angles
    wall: float  # lateral soft-tissue thickness
    apex: float
    dome: tuple[float, float]  # hemidiaphragm dome height (patient right, patient left)
    cp: tuple[float, float]  # costophrenic angle height
    ctr: float
    heart_h: float
    breasts: float
    rib_dy: float
    rib_drop: float
    spine_wave: float
    exposure: float
    gamma: float
    noise: float
    depth: float
    effusion_level: tuple[float, float]  # meniscus top per side (inf = no fluid)
    effusion_rise: float
    line_route: str
    pm_leads: int
    devices: tuple[str, ...]
    cardiomegaly: bool
    seed_draw: dict[str, int] = field(default_factory=dict)

    @classmethod
    def sample(cls, spec: RenderSpec, seed: int) -> _Patient:
        rng = np.random.default_rng([seed, 2])
        size = rng.uniform(0.86, 1.06)
        hw = min(0.355 * size, 0.40)
        apex = rng.uniform(0.10, 0.14)
        dome_r = rng.uniform(0.63, 0.71)
        dome = (dome_r, dome_r + rng.uniform(0.012, 0.035))
        cp_drop = rng.uniform(0.055, 0.08)
        cp = (dome[0] + cp_drop, dome[1] + cp_drop * rng.uniform(0.9, 1.1))
        if spec.cardiomegaly:
            ctr = rng.uniform(0.56, 0.68)
        else:
            ctr = float(np.clip(rng.normal(0.42, 0.03), 0.36, 0.48))
        level = [math.inf, math.inf]
        if spec.effusion is not None:
            sides = {"right": [0], "left": [1], "bilateral": [0, 1]}[spec.effusion]
            above = {"small": (0.015, 0.04), "moderate": (0.06, 0.11), "large": (0.16, 0.24)}
            lo, hi = above[spec.effusion_size]
            for s in sides:
                level[s] = dome[s] - rng.uniform(lo, hi)
        return cls(
            cx=0.5 + rng.normal(0, 0.012),
            hw=hw,
            wall=rng.uniform(0.03, 0.065) * size,
            apex=apex,
            dome=dome,
            cp=cp,
            ctr=ctr,
            heart_h=rng.uniform(0.21, 0.25) * (1.12 if spec.cardiomegaly else 1.0),
            breasts=float(rng.uniform(0.06, 0.14)) if rng.random() < 0.4 else 0.0,
            rib_dy=(dome_r - apex) / rng.uniform(7.6, 8.6),
            rib_drop=rng.uniform(0.05, 0.09),
            spine_wave=rng.normal(0, 0.006),
            exposure=rng.uniform(0.85, 1.15),
            gamma=rng.uniform(0.85, 1.2),
            noise=rng.uniform(0.008, 0.02),
            depth=rng.uniform(0.9, 1.1) * size,
            effusion_level=(level[0], level[1]),
            effusion_rise=rng.uniform(0.04, 0.08),
            line_route=str(rng.choice(["jugular", "subclavian", "picc"])),
            pm_leads=int(rng.integers(1, 3)),
            devices=spec.devices,
            cardiomegaly=spec.cardiomegaly,
            seed_draw={"frontal": int(rng.integers(2**31)), "lateral": int(rng.integers(2**31))},
        )


def _smooth(t: np.ndarray) -> np.ndarray:
    """Smoothstep of a clipped ramp: 0 below 0, 1 above 1."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _ellipse(X, Y, cx, cy, rx, ry) -> np.ndarray:
    """Thickness profile of an ellipsoid seen edge-on: sqrt(1 - r^2) inside, 0 outside."""
    r2 = ((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2
    return np.sqrt(np.clip(1.0 - r2, 0.0, 1.0))


def _bezier(points, n: int = 48) -> np.ndarray:
    """``n`` points along the Bezier curve with these control points (de Casteljau)."""
    ctrl = np.asarray(points, dtype=np.float64)[None]
    t = np.linspace(0.0, 1.0, n)[:, None, None]
    ctrl = np.repeat(ctrl, n, axis=0)
    while ctrl.shape[1] > 1:
        ctrl = ctrl[:, :-1] * (1.0 - t) + ctrl[:, 1:] * t
    return ctrl[:, 0, :]


class _Canvas:
    """A float layer to draw lines and shapes on in normalised coordinates."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.image = Image.new("F", (size, size), 0.0)
        self.draw = ImageDraw.Draw(self.image)

    def _px(self, pts) -> list[tuple[float, float]]:
        return [tuple(xy) for xy in (np.asarray(pts, dtype=np.float64) * self.size).tolist()]

    def line(self, pts, width_px: float, value: float) -> None:
        self.draw.line(
            self._px(pts), fill=float(value), width=max(1, int(round(width_px))), joint="curve"
        )

    def polygon(self, pts, value: float) -> None:
        self.draw.polygon(self._px(pts), fill=float(value))

    def ellipse(self, cx, cy, rx, ry, value: float) -> None:
        s = self.size
        self.draw.ellipse(
            [(cx - rx) * s, (cy - ry) * s, (cx + rx) * s, (cy + ry) * s], fill=float(value)
        )

    def array(self) -> np.ndarray:
        return np.asarray(self.image, dtype=np.float32)


class SyntheticXrayRenderer:
    """Render frontal (PA) and lateral chest radiographs for a :class:`RenderSpec`.

    ``size`` is the square output size in pixels (224 for the small default, 518 for
    MAIRA-2's input). ``line_px`` is the width of catheters, tubes and leads at that size
    (default 2 below 300 px, else 3).
    """

    def __init__(self, size: int = 224, *, line_px: int | None = None) -> None:
        if size < 64:
            raise ValueError(f"size must be at least 64 pixels to draw anatomy, got {size}")
        self.size = int(size)
        self.line_px = int(line_px) if line_px is not None else (2 if size < 300 else 3)
        # Smooth anatomy is computed at up to ~288 px and upsampled; devices and the display
        # (noise, blur) run at the output size so thin lines stay sharp.
        self._ws = self.size if self.size <= 288 else (self.size + 1) // 2
        c = (np.arange(self._ws, dtype=np.float32) + 0.5) / self._ws
        self._X, self._Y = np.meshgrid(c, c)

    # ------------------------------------------------------------------ public API
    def render(
        self,
        spec: RenderSpec | Mapping[str, bool],
        seed: int,
        views: tuple[str, ...] = ("frontal", "lateral"),
    ) -> dict[str, Image.Image]:
        """Render the requested views (``"frontal"``, ``"lateral"``) as greyscale PIL images."""
        if not isinstance(spec, RenderSpec):
            spec = RenderSpec.from_labels(spec, seed)
        unknown = set(views) - {"frontal", "lateral"}
        if unknown:
            raise ValueError(f"unknown views {sorted(unknown)}; use 'frontal' and/or 'lateral'")
        patient = _Patient.sample(spec, seed)
        out = {}
        for view in views:
            rng = np.random.default_rng(patient.seed_draw[view])
            if view == "frontal":
                atten = self._frontal(patient, rng)
                devices = self._frontal_devices if patient.devices else None
            else:
                atten = self._lateral(patient, rng)
                devices = self._lateral_devices if patient.devices else None
            if self._ws != self.size:
                atten = np.asarray(
                    Image.fromarray(atten).resize((self.size, self.size), Image.Resampling.BICUBIC),
                    dtype=np.float32,
                )
            if devices is not None:
                atten = atten + devices(patient, rng)
            out[view] = self._display(atten, patient, rng)
        return out

    def frontal(self, spec: RenderSpec | Mapping[str, bool], seed: int) -> Image.Image:
        return self.render(spec, seed, ("frontal",))["frontal"]

    def lateral(self, spec: RenderSpec | Mapping[str, bool], seed: int) -> Image.Image:
        return self.render(spec, seed, ("lateral",))["lateral"]

    # ------------------------------------------------------------------ display
    def _display(self, atten: np.ndarray, p: _Patient, rng: np.random.Generator) -> Image.Image:
        S = self.size
        atten = gaussian_filter(atten, sigma=0.45 * S / 224, mode="nearest")
        img = 1.0 - np.exp(-1.25 * p.exposure * atten)
        # Clinical processing: mild unsharp masking brings out ribs and vessels.
        small = Image.fromarray(img).resize((S // 8, S // 8), Image.Resampling.BOX)
        low = np.asarray(small.resize((S, S), Image.Resampling.BICUBIC), dtype=np.float32)
        img = img + 0.35 * (img - low)
        img = np.clip(img / 0.93, 0.0, 1.0) ** p.gamma
        # Quantum noise grows with transmitted signal (dark areas); plus a little fine grain.
        noise = rng.standard_normal(img.shape).astype(np.float32)
        img = img + p.noise * noise * (1.2 - 0.6 * img)
        img = gaussian_filter(img, sigma=0.35 * S / 224)
        return Image.fromarray((np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), mode="L")

    # ------------------------------------------------------------------ frontal
    def _frontal(self, p: _Patient, rng: np.random.Generator) -> np.ndarray:
        S, X, Y = self._ws, self._X, self._Y
        y1 = Y[:, 0]
        dx = X - p.cx
        adx = np.abs(dx)
        right = dx < 0  # image left = patient right (PA view)
        sv = lambda pair: np.where(right, np.float32(pair[0]), np.float32(pair[1]))  # noqa: E731

        # Body outline: neck, shoulders, chest, abdomen.
        outer = p.hw + p.wall
        w_row = np.interp(
            y1,
            [0.0, 0.05, 0.10, 0.16, 0.35, 0.7, 1.0],
            [0.075, 0.09, outer + 0.02, outer + 0.06, outer + 0.02, outer, outer - 0.015],
        )[:, None]
        body = np.sqrt(np.clip(1.0 - (dx / w_row) ** 2, 0.0, 1.0))
        A = 0.95 * p.depth * body

        # Lungs.
        dome, cp = sv(p.dome), sv(p.cp)
        t = np.clip((Y - p.apex) / (cp - p.apex), 0.0, 1.0)
        ri = p.hw * (1.0 - (1.0 - t) ** 2.6) ** 0.5
        xr = adx / p.hw
        y_d = (
            dome
            + (cp - dome) * np.clip((xr - 0.3) / 0.7, 0.0, 1.0) ** 2
            + 0.02 * np.clip((0.3 - xr) / 0.3, 0.0, 1.0)
        )
        knob = 0.045 * np.exp(-(((y1 - 0.30) / 0.035) ** 2))[:, None]
        med = np.where(right, 0.055 + 0.01 * (Y > 0.35), 0.05 + knob)
        lung = (
            _smooth((ri - adx) / 0.035)
            * _smooth((adx - med) / 0.02)
            * _smooth((y_d - Y) / 0.01)
            * _smooth((Y - p.apex) / 0.04)
        )

        # Heart: per-row borders. The right border bulges just past the spine (right atrium);
        # the left border runs from the pulmonary trunk down to the apex on the left
        # hemidiaphragm. Its widest span is ctr * the internal thoracic width.
        Wh = p.ctr * 2.0 * p.hw
        Hh = p.heart_h
        yb = p.dome[1] + 0.03
        top = yb - Hh
        u = (Y - top) / Hh
        e_left = (
            0.045
            + (0.66 * Wh - 0.045)
            * np.clip(np.sin(0.5 * np.pi * np.clip(u / 0.82, 0, 1)), 0, 1) ** 0.9
        )
        e_right = (
            0.05
            + (0.34 * Wh - 0.05)
            * np.clip(np.sin(np.pi * np.clip((u + 0.1) / 1.25, 0, 1)), 0, 1) ** 0.6
        )
        edge = np.where(right, e_right, e_left)
        heart_shape = _smooth((edge - adx) / 0.012) * _smooth(u / 0.15)
        heart = heart_shape * _smooth((y_d - Y) / 0.006)
        heart = heart * (
            0.6 + 0.4 * _ellipse(X, Y, p.cx + 0.16 * Wh, top + 0.6 * Hh, 0.55 * Wh, 0.9 * Hh)
        )
        upper_med = _smooth((med + 0.01 - adx) / 0.02) * _smooth((top + 0.1 - Y) / 0.1)
        heart_mask = heart_shape
        lung = lung * (1.0 - heart_mask)

        # Pleural effusion: fluid replaces air below a meniscus that rises laterally.
        lvl = sv(p.effusion_level)
        if np.isfinite(p.effusion_level).any():
            xl = np.clip((adx - 0.06) / (p.hw - 0.06), 0.0, 1.0)
            y_men = lvl + p.effusion_rise * (1.0 - xl) ** 2
            fluid = np.where(np.isfinite(lvl), _smooth((Y - y_men) / 0.05), 0.0)
            fluid = fluid * _smooth((ri + 0.01 - adx) / 0.02)
            lung = lung * (1.0 - fluid)
            A = A + 0.12 * fluid * _smooth((cp + 0.02 - Y) / 0.02)

        # Breast shadows over the lower zones.
        if p.breasts > 0:
            for s in (-1, 1):
                shadow = _ellipse(X, Y, p.cx + s * 0.25, p.dome[0] - 0.03, 0.2, 0.16) ** 0.5
                A = A + p.breasts * shadow * body

        A = A - 0.62 * p.depth * lung + 0.2 * np.maximum(heart, upper_med)
        # Trachea and main bronchi (air), aortic knob and hila (soft tissue).
        car_y = _carina_y(p)
        tr = _Canvas(S)
        tr.line([(p.cx, 0.0), (p.cx + 0.004, car_y)], 0.028 * S, 1.0)
        tr.line([(p.cx, car_y), (p.cx - 0.06, car_y + 0.06)], 0.018 * S, 1.0)
        tr.line([(p.cx, car_y), (p.cx + 0.07, car_y + 0.07)], 0.016 * S, 1.0)
        A = A - 0.22 * gaussian_filter(tr.array(), 0.006 * S)
        A = A + 0.2 * _ellipse(X, Y, p.cx + 0.055, 0.30, 0.035, 0.03)
        for s, hx in ((-1, 0.085), (1, 0.09)):
            A = A + 0.16 * _ellipse(X, Y, p.cx + s * hx, car_y + 0.07, 0.035, 0.05)

        A = A + lung * self._vessels(p, rng, car_y)
        A = A + self._frontal_bones(p, rng, body)
        A = A + self._gastric_bubble(p)
        return A

    def _gastric_bubble(self, p: _Patient) -> np.ndarray:
        X, Y = self._X, self._Y
        cy = p.dome[1] + 0.055
        bubble = _ellipse(X, Y, p.cx + 0.17, cy, 0.055, 0.035) * (Y < cy + 0.004)
        return -0.3 * bubble

    def _vessels(self, p: _Patient, rng: np.random.Generator, car_y: float) -> np.ndarray:
        """Branching pulmonary vessels from each hilum, thinning towards the periphery."""
        S = self._ws
        cv = _Canvas(S)
        for s in (-1, 1):
            hx, hy = p.cx + s * 0.09, car_y + 0.07
            # (x, y, angle above the lateral horizontal, length, width)
            stack = [
                (hx, hy, math.radians(a), 0.06, 0.009) for a in (115, 75, 45, 15, -15, -45, -75)
            ]
            while stack:
                x0, y0, ang, length, width = stack.pop()
                ang = ang + rng.normal(0.0, 0.12)
                pts = [(x0, y0)]
                for _ in range(4):  # a gently wandering segment
                    ang = ang + rng.normal(0.0, 0.08)
                    x0, y0 = x0 + s * math.cos(ang) * length / 4, y0 - math.sin(ang) * length / 4
                    pts.append((x0, y0))
                cv.line(pts, max(width * S, 1.0), 0.02 + 4.0 * width)
                if length > 0.03:
                    for da in (-0.45, 0.35):
                        stack.append(
                            (x0, y0, ang + da + rng.normal(0, 0.1), length * 0.78, width * 0.72)
                        )
        return gaussian_filter(cv.array(), 0.7 * S / 224)

    def _frontal_bones(self, p: _Patient, rng: np.random.Generator, body: np.ndarray) -> np.ndarray:
        S, X, Y = self._ws, self._X, self._Y
        bone = _Canvas(S)
        rib_w = 0.026 * S
        # Posterior ribs: up-and-out from the spine, then arcing laterally and down.
        t = np.linspace(0.0, 1.0, 16)
        reach = p.hw + 0.015
        for k in range(11):
            y0 = p.apex - 0.035 + k * p.rib_dy
            ys = y0 - 0.03 * np.sin(np.pi * t * 0.8) + p.rib_drop * t**2 + 0.012 * k * t
            for s in (-1, 1):
                xs = p.cx + s * (0.035 + (reach - 0.035) * t)
                pts = np.stack([xs, ys], axis=1)
                bone.line(pts, rib_w, 0.1)
                bone.line(pts, rib_w * 0.55, -0.03)
                # Anterior rib: from the lateral end sweeping down and in, fading medially.
                xe, ye = xs[-1], ys[-1]
                ant = _bezier(
                    [(xe, ye), (xe - s * 0.05, ye + 0.09), (p.cx + s * 0.16, ye + 0.13)], 10
                )
                bone.line(ant, rib_w * 0.8, 0.06)
        # Clavicles and scapulae.
        for s in (-1, 1):
            clav = _bezier(
                [
                    (p.cx + s * 0.03, 0.19),
                    (p.cx + s * 0.14, 0.175),
                    (p.cx + s * 0.22, 0.13),
                    (p.cx + s * 0.33, 0.125),
                ],
                24,
            )
            bone.line(clav, 0.024 * S, 0.3)
            bone.polygon(
                [
                    (p.cx + s * (p.hw - 0.07), 0.15),
                    (p.cx + s * (p.hw + 0.04), 0.13),
                    (p.cx + s * (p.hw + 0.02), 0.42),
                ],
                0.09,
            )
        A = gaussian_filter(bone.array(), 0.7 * S / 224)
        # Humeral heads at the top corners.
        for s in (-1, 1):
            A = A + 0.25 * _ellipse(X, Y, p.cx + s * (p.hw + 0.05), 0.165, 0.045, 0.05) * body
        # Spine: vertebral bodies with disc spaces and pedicles, visible through the mediastinum.
        sx = p.cx + p.spine_wave * np.sin(Y * 9.0)
        col = _smooth((0.034 - np.abs(X - sx)) / 0.012)
        disc = 0.5 + 0.5 * np.cos(2 * np.pi * (Y - 0.02) / 0.043)
        A = A + col * (0.11 - 0.05 * disc**8)
        ped = _ellipse(np.abs(X - sx), np.mod(Y - 0.02, 0.043), 0.024, 0.018, 0.007, 0.009)
        A = A + 0.06 * ped
        return A

    def _line_route(self, p: _Patient) -> list[tuple[float, float]]:
        """A central venous catheter from its entry point to a tip at the cavoatrial junction."""
        cx, tip = p.cx, (p.cx - 0.04, 0.41)
        if p.line_route == "jugular":
            return _bezier(
                [(cx - 0.09, 0.0), (cx - 0.07, 0.12), (cx - 0.03, 0.2), tip], 40
            ).tolist()
        if p.line_route == "subclavian":
            return _bezier([(cx - 0.3, 0.19), (cx - 0.15, 0.2), (cx - 0.04, 0.2), tip], 40).tolist()
        return _bezier(
            [(0.0, 0.33), (cx - 0.32, 0.22), (cx - 0.12, 0.19), (cx - 0.05, 0.26), tip], 60
        ).tolist()

    def _frontal_devices(self, p: _Patient, rng: np.random.Generator) -> np.ndarray:
        car_y, Wh, Hh = _carina_y(p), p.ctr * 2.0 * p.hw, p.heart_h
        yb = p.dome[1] + 0.03
        S = self.size
        dv = _Canvas(S)
        lw = self.line_px
        if "central_line" in p.devices:
            dv.line(self._line_route(p), lw, 0.9)
        if "pacemaker" in p.devices:
            gx, gy = p.cx + 0.24 + rng.uniform(-0.02, 0.02), 0.21 + rng.uniform(-0.02, 0.02)
            dv.draw.rounded_rectangle(
                [(gx - 0.04) * S, (gy - 0.03) * S, (gx + 0.04) * S, (gy + 0.03) * S],
                radius=0.015 * S,
                fill=2.4,
            )
            dv.draw.rectangle(
                [(gx - 0.03) * S, (gy - 0.012) * S, (gx + 0.01) * S, (gy + 0.02) * S], fill=3.0
            )
            ra = (p.cx - 0.05, yb - 0.55 * Hh)
            rv = (p.cx + 0.3 * Wh, yb - 0.12 * Hh)
            tips = [rv, ra][: p.pm_leads]
            for i, tip in enumerate(tips):
                off = 0.012 * i
                path = _bezier(
                    [
                        (gx - 0.03, gy + off),
                        (p.cx + 0.02, 0.16 + off),
                        (p.cx - 0.05, 0.3),
                        (p.cx - 0.06, 0.45),
                        tip,
                    ],
                    60,
                )
                dv.line(path, lw, 1.6)
                dv.ellipse(tip[0], tip[1], 0.006, 0.006, 2.0)
        if "endotracheal_tube" in p.devices:
            tip = car_y - rng.uniform(0.04, 0.07)
            dv.line([(p.cx - 0.004, 0.0), (p.cx + 0.002, tip)], 0.03 * S, 0.25)
            dv.line([(p.cx - 0.012, 0.0), (p.cx - 0.006, tip)], lw, 1.2)
        if "nasogastric_tube" in p.devices:
            path = _bezier(
                [
                    (p.cx + 0.01, 0.0),
                    (p.cx + 0.02, 0.4),
                    (p.cx + 0.03, p.dome[1]),
                    (p.cx + 0.14, p.dome[1] + 0.09),
                    (p.cx + 0.2, p.dome[1] + 0.06),
                ],
                60,
            )
            dv.line(path, lw, 1.0)
        return gaussian_filter(dv.array(), 0.3 * S / 224)

    # ------------------------------------------------------------------ lateral
    def _lateral(self, p: _Patient, rng: np.random.Generator) -> np.ndarray:
        """Left lateral view, patient facing image left: anterior left, posterior right.

        Both lungs overlap here, so each half-lung gets its own hemidiaphragm and its own
        effusion (a unilateral effusion fills only one posterior sulcus).
        """
        S, X, Y = self._ws, self._X, self._Y
        y1 = Y[:, 0]
        k = p.depth - 1.0
        ant = _lateral_anterior(y1, p)[:, None]
        post = (
            np.interp(y1, [0.0, 0.1, 0.3, 0.6, 1.0], [0.76, 0.8, 0.86, 0.87, 0.85])[:, None]
            + 0.03 * k
        )
        body = _smooth((X - ant) / 0.05) * _smooth((post - X) / 0.03)
        A = p.depth * body * (0.95 + 0.35 * _smooth((0.3 - Y) / 0.2))
        xp = (X - ant) / (post - ant)  # 0 anterior skin .. 1 posterior skin

        lungs, diaphragms = [], []
        for side in (0, 1):  # patient right (higher dome), patient left
            dome = p.dome[side] - 0.01
            cp_post = p.cp[side] + 0.06
            y_d = (
                dome
                + 0.04 * np.clip((0.35 - xp) / 0.35, 0, 1) ** 2
                + (cp_post - dome) * np.clip((xp - 0.45) / 0.45, 0, 1) ** 2
            )
            lung = (
                _smooth((Y - p.apex + 0.02) / 0.08)
                * _smooth((y_d - Y) / 0.008)
                * _smooth((xp - 0.05) / 0.08)
                * _smooth((0.93 - xp) / 0.06)
            )
            if math.isfinite(p.effusion_level[side]):
                xl = np.clip((xp - 0.3) / 0.6, 0, 1)
                y_men = p.effusion_level[side] + 0.05 + p.effusion_rise * 1.5 * (1.0 - xl) ** 2
                fluid = _smooth((Y - y_men) / 0.04) * _smooth((xp - 0.25) / 0.1)
                lung = lung * (1.0 - fluid)
            lungs.append(lung)
            diaphragms.append(y_d)
        lung = 0.5 * (lungs[0] + lungs[1])

        # Heart: anterior and inferior, on the left hemidiaphragm; an enlarged heart fills the
        # retrosternal space and reaches back towards the spine.
        y_dl = diaphragms[1]
        hx, hy, rx, ry = self._lateral_heart(p)
        heart_thick = _ellipse(X, Y, hx, hy, rx, ry)
        heart_shape = _smooth(heart_thick / 0.3)
        heart = heart_thick * _smooth((y_dl - Y) / 0.006)
        lung = lung * (1.0 - 0.75 * heart_shape)
        ao = _Canvas(S)
        ao.line(
            _bezier([(0.40, 0.42), (0.40, 0.24), (0.6, 0.2), (0.65, 0.4), (0.66, p.dome[1])], 40),
            0.05 * S,
            1.0,
        )
        aorta = gaussian_filter(ao.array(), 0.012 * S)
        lung = lung * (1.0 - 0.25 * aorta)
        A = A - 0.8 * p.depth * lung * (0.85 + 0.15 * _smooth((xp - 0.2) / 0.3)) + 0.1 * heart
        A = A + 0.1 * _ellipse(X, Y, 0.55, 0.42, 0.06, 0.05)

        car_y = _LATERAL_CARINA_Y
        tr = _Canvas(S)
        tr.line(_bezier([(0.52, 0.0), (0.5, 0.2), (0.55, car_y)], 20), 0.03 * S, 1.0)
        A = A - 0.25 * gaussian_filter(tr.array(), 0.006 * S)

        bone = _Canvas(S)
        vh = 0.044
        for i in range(int(1.0 / vh) + 1):
            yc = 0.02 + i * vh
            xc = float(np.interp(yc, y1, post[:, 0])) - 0.15 + 0.02 * math.sin(math.pi * yc)
            hwv, hhv = 0.036, vh * 0.38
            bone.polygon(
                [
                    (xc - hwv, yc - hhv),
                    (xc + hwv, yc - hhv + 0.004),
                    (xc + hwv, yc + hhv + 0.004),
                    (xc - hwv, yc + hhv),
                ],
                0.13,
            )
            bone.line(
                [(xc + hwv + 0.01, yc - 0.005), (xc + hwv + 0.055, yc + 0.02)], 0.012 * S, 0.06
            )
        xs = float(np.interp(0.25, y1, ant[:, 0])) + 0.02
        bone.line(_bezier([(xs + 0.02, 0.22), (xs, 0.35), (xs - 0.005, 0.52)], 20), 0.018 * S, 0.12)
        for i in range(9):
            y0 = p.apex + 0.02 + i * p.rib_dy
            bone.line(
                _bezier([(0.8, y0), (0.65, y0 + 0.05), (0.45, y0 + 0.12)], 16), 0.02 * S, 0.04
            )
        A = A + gaussian_filter(bone.array(), 0.8 * S / 224)
        A = A + lung * 0.6 * self._lateral_vessels(p, rng)
        cy = p.dome[1] + 0.05
        A = A - 0.25 * _ellipse(X, Y, 0.3, cy, 0.06, 0.03) * (Y < cy + 0.004)
        return A

    @staticmethod
    def _lateral_heart(p: _Patient) -> tuple[float, float, float, float]:
        """Centre and radii of the heart on the lateral view; it grows with the frontal CTR."""
        grow = max(0.0, (p.ctr - 0.42) / 0.2)
        rx, ry = 0.16 * (1 + 0.6 * grow), 0.14 * (1 + 0.35 * grow)
        ant = float(_lateral_anterior(np.array([p.dome[1]]), p)[0])
        return ant + rx - 0.02, p.dome[1] - 0.09, rx, ry

    def _lateral_vessels(self, p, rng) -> np.ndarray:
        S = self._ws
        cv = _Canvas(S)
        for _ in range(16):
            ang = rng.uniform(0, 2 * math.pi)
            length = rng.uniform(0.08, 0.18)
            x0, y0 = 0.52 + rng.normal(0, 0.02), 0.42 + rng.normal(0, 0.02)
            cv.line(
                [(x0, y0), (x0 + math.cos(ang) * length, y0 + math.sin(ang) * length)],
                max(1.0, 0.007 * S),
                0.1,
            )
        return gaussian_filter(cv.array(), 0.6 * S / 224)

    def _lateral_devices(self, p: _Patient, rng: np.random.Generator) -> np.ndarray:
        dome, car_y = p.dome[1], _LATERAL_CARINA_Y
        hx, hy = self._lateral_heart(p)[:2]
        S = self.size
        dv = _Canvas(S)
        lw = self.line_px
        if "central_line" in p.devices:
            start = (0.5, 0.0) if p.line_route == "jugular" else (0.2, 0.18)
            dv.line(_bezier([start, (0.45, 0.2), (0.43, 0.3), (0.42, 0.41)], 40), lw, 0.9)
        if "pacemaker" in p.devices:
            gx, gy = 0.2, 0.21
            dv.draw.rounded_rectangle(
                [(gx - 0.015) * S, (gy - 0.035) * S, (gx + 0.015) * S, (gy + 0.035) * S],
                radius=0.008 * S,
                fill=2.6,
            )
            for i in range(p.pm_leads):
                tip = (hx - 0.08, hy + 0.06) if i == 0 else (0.42, 0.45)
                dv.line(
                    _bezier([(gx, gy), (0.35, 0.15), (0.45, 0.3), (0.42, 0.42), tip], 50), lw, 1.6
                )
        if "endotracheal_tube" in p.devices:
            dv.line([(0.52, 0.0), (0.5, 0.2), (0.515, car_y - 0.05)], lw, 1.2)
        if "nasogastric_tube" in p.devices:
            dv.line(
                _bezier(
                    [(0.56, 0.0), (0.6, 0.4), (0.58, dome), (0.4, dome + 0.06), (0.3, dome + 0.06)],
                    50,
                ),
                lw,
                1.0,
            )
        return gaussian_filter(dv.array(), 0.3 * S / 224)


_LATERAL_CARINA_Y = 0.37


def _carina_y(p: _Patient) -> float:
    return 0.35 + 0.04 * (p.apex - 0.1) / 0.04


def _lateral_anterior(y: np.ndarray, p: _Patient) -> np.ndarray:
    """Anterior skin line of the lateral view (x per row), deeper chests reach further left."""
    xs = np.interp(y, [0.0, 0.1, 0.22, 0.5, 0.8, 1.0], [0.40, 0.34, 0.2, 0.16, 0.15, 0.16])
    return (xs - 0.05 * (p.depth - 1.0)).astype(np.float32)


def contact_sheet(
    specs: list[tuple[str, RenderSpec, int]],
    renderer: SyntheticXrayRenderer | None = None,
    *,
    columns: int = 4,
) -> Image.Image:
    """A grid of frontal|lateral pairs with a caption each, to look at the renderer's output."""
    renderer = renderer or SyntheticXrayRenderer(224)
    S = renderer.size
    tiles = []
    for caption, spec, seed in specs:
        views = renderer.render(spec, seed)
        tile = Image.new("L", (2 * S + 4, S + 16), 0)
        tile.paste(views["frontal"], (0, 16))
        tile.paste(views["lateral"], (S + 4, 16))
        ImageDraw.Draw(tile).text((3, 2), caption, fill=255)
        tiles.append(tile)
    rows = (len(tiles) + columns - 1) // columns
    tw, th = tiles[0].size
    sheet = Image.new("L", (columns * (tw + 6), rows * (th + 6)), 40)
    for i, tile in enumerate(tiles):
        sheet.paste(tile, ((i % columns) * (tw + 6), (i // columns) * (th + 6)))
    return sheet
