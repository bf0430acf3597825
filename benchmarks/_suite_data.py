"""The scenario suite's three datasets, offline and deterministic from a seed.

Each is a :class:`SiteData`: pixel-space images in [0, 1], and per image its label, acquiring
device (0 = the device that stays, 1 = the second one) and synthetic patient, with whole
patients assigned to the train / calibration / test splits (as a site would split its data).

* ``digits``: scikit-learn's 1,797 handwritten digits through the demo site's two-device
  acquisition (revise.data.demo_site.acquire: Acme DX-100 at 16x16, Borealis CR-7 at 24x24 with
  a compressive response, blur and sensor noise), each image min-max scaled (the demo card's
  intensity) and resized to the model's 16x16.
* ``fashion``: a class-balanced subset of Fashion-MNIST's training file (Debian's
  dataset-fashion-mnist), 28x28, with a synthetic second device on ~30% of the patients: a
  slightly lifted black, lower contrast, a gamma of 0.75, a 3x3 blur and sensor noise (a model
  trained without it gets about half of its images right).
* ``lesions``: procedural RGB 48x48 skin-lesion-like images of four classes (round uniform
  blob; lobulated blob with two-tone colour; blob with dark dots; blob with radial streaks) on
  varied skin tones with hairs and noise; the second device is a warm, blurred, vignetted
  camera.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

SPLITS = ("train", "calibration", "test")
FASHION_DATA = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DataSize:
    """How much of a dataset a scale uses (``images`` None: every image)."""

    images: int | None
    patients: int


@dataclass
class SiteData:
    name: str
    description: str
    x: torch.Tensor  # (N, C, H, W) in [0, 1]
    label: np.ndarray  # (N,) int64
    device: np.ndarray  # (N,) int64: 0 = kept device, 1 = the second device
    patient: np.ndarray  # (N,) int64 synthetic patient ids
    split: np.ndarray  # (N,) str: train / calibration / test
    class_names: list[str]
    device_names: tuple[str, str]
    card_kwargs: dict  # ModelCard fields beyond the shape

    def mask(self, split: str) -> np.ndarray:
        return self.split == split

    def counts(self) -> dict[str, int]:
        return {s: int(self.mask(s).sum()) for s in SPLITS}


def assign_patients(
    n: int, n_patients: int, second_device_share: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patients for ``n`` images, one device per patient, and a 70/10/20 split by patient."""
    patient = rng.integers(0, n_patients, n)
    device_of = (rng.random(n_patients) < second_device_share).astype(np.int64)
    order = rng.permutation(n_patients)
    n_cal, n_test = round(0.1 * n_patients), round(0.2 * n_patients)
    split_of = np.empty(n_patients, dtype=object)
    split_of[order[:n_test]] = "test"
    split_of[order[n_test : n_test + n_cal]] = "calibration"
    split_of[order[n_test + n_cal :]] = "train"
    return patient, device_of[patient], split_of[patient].astype(str)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)


# -- digits: the demo site ------------------------------------------------------------------


def digits(size: DataSize, seed: int) -> SiteData:
    from sklearn.datasets import load_digits

    from revise.data.demo_site import DEVICES, FORGET_DEVICE, acquire

    bunch = load_digits()
    rng = np.random.default_rng(seed)
    keep = _subset(bunch.target, size.images, 10)
    patient, device, split = assign_patients(len(keep), size.patients, 0.35, rng)
    names = (next(d for d in DEVICES if d != FORGET_DEVICE), FORGET_DEVICE)
    images = []
    for i, d in zip(keep, device, strict=True):
        img = acquire(bunch.images[i], names[d], rng)
        lo, hi = img.min(), img.max()
        img = (img - lo) / (hi - lo) if hi > lo else np.zeros_like(img)  # the card's minmax
        images.append(_resize(torch.from_numpy(img).float()[None, None], 16)[0])
    return SiteData(
        "digits",
        "scikit-learn digits through the demo site's two devices (16x16 Acme DX-100, 24x24 "
        "Borealis CR-7 with blur, gamma and noise), resized to 16x16",
        torch.stack(images),
        bunch.target[keep].astype(np.int64),
        device,
        patient,
        split,
        [f"digit {i}" for i in range(10)],
        names,
        {"in_channels": 1, "input_size": (16, 16), "mean": (0.5,), "std": (0.25,)},
    )


def _subset(labels: np.ndarray, n: int | None, classes: int) -> np.ndarray:
    """Indices of a class-balanced subset of ``n`` images (all if None): the first of each
    class, in file order."""
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    per = n // classes
    return np.sort(np.concatenate([np.flatnonzero(labels == c)[:per] for c in range(classes)]))


# -- fashion: Fashion-MNIST with a synthetic second device ----------------------------------


def fashion(size: DataSize, seed: int, folder: Path = FASHION_DATA) -> SiteData:
    from _suite_common import FASHION_CLASSES, idx_file

    from revise.data._idx_format import read_idx

    labels = read_idx(idx_file(folder, "train-labels-idx1-ubyte")).astype(np.int64)
    rng = np.random.default_rng(seed)
    keep = _subset(labels, size.images, 10)
    images = read_idx(idx_file(folder, "train-images-idx3-ubyte"))[keep]
    x = torch.from_numpy(images.astype(np.float32) / 255.0)[:, None]
    patient, device, split = assign_patients(len(keep), size.patients, 0.3, rng)
    second = torch.from_numpy(device == 1)
    x[second] = second_device(x[second], torch.Generator().manual_seed(seed))
    return SiteData(
        "fashion",
        "Fashion-MNIST (Debian dataset-fashion-mnist, class-balanced subset of the training "
        "file) at 28x28; second device: 0.03 + 0.85 x, gamma 0.75, 3x3 blur, noise sd 0.05",
        x,
        labels[keep],
        device,
        patient,
        split,
        FASHION_CLASSES,
        ("scanner A", "scanner B (synthetic)"),
        {"in_channels": 1, "input_size": (28, 28), "mean": (0.33,), "std": (0.33,)},
    )


def second_device(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """A deterministic acquisition change: lower contrast, compressive response, blur, noise."""
    x = blur3(0.03 + 0.85 * x).pow(0.75)
    return (x + 0.05 * torch.randn(x.shape, generator=generator)).clamp(0, 1)


# -- lesions: procedural RGB skin-lesion-like images ----------------------------------------

LESION_CLASSES = ["uniform", "lobulated", "dotted", "streaked"]
LESION_SIZE = 48


def lesions(size: DataSize, seed: int) -> SiteData:
    n = size.images or 3000
    rng = np.random.default_rng(seed)
    label = np.arange(n) % len(LESION_CLASSES)
    rng.shuffle(label)
    patient, device, split = assign_patients(n, size.patients, 0.3, rng)
    images = np.stack([_lesion(int(c), rng) for c in label])
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float()
    second = torch.from_numpy(device == 1)
    x[second] = warm_camera(x[second], torch.Generator().manual_seed(seed))
    return SiteData(
        "lesions",
        "procedural RGB 48x48 skin-lesion-like images, 4 classes (uniform, lobulated, dotted, "
        "streaked) on varied skin tones with hairs; second device: warm tint, blur, vignette",
        x,
        label.astype(np.int64),
        device,
        patient,
        split,
        LESION_CLASSES,
        ("dermatoscope A", "dermatoscope B (synthetic)"),
        {"in_channels": 3, "input_size": (48, 48), "mean": (0.6, 0.45, 0.35), "std": (0.2,)},
    )


def _lesion(kind: int, rng: np.random.Generator) -> np.ndarray:
    """One (48, 48, 3) image in [0, 1]. Class cues are of random strength, so that some images
    of a class look like another's (a model does not reach 100%)."""
    s = LESION_SIZE
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    cy, cx = s / 2 + rng.normal(0, 3, 2)
    radius = rng.uniform(9, 16)
    angle = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(yy - cy, xx - cx)
    border = radius * (1 + rng.normal(0, 0.04) * np.cos(2 * angle + rng.uniform(0, 6.3)))
    if kind == 1:  # lobulated border
        lobes = rng.integers(3, 7)
        wobble = np.cos(lobes * angle + rng.uniform(0, 6.3))
        border = border * (1 + rng.uniform(0.12, 0.3) * wobble)
    inside = 1 / (1 + np.exp((dist - border) / 1.2))
    skin = np.array([0.85, 0.66, 0.55]) * rng.uniform(0.7, 1.1) + rng.normal(0, 0.03, 3)
    brown = np.array([0.45, 0.28, 0.18]) * rng.uniform(0.6, 1.2)
    shade = np.ones((s, s), dtype=np.float32)
    if kind == 1:  # two-tone colour
        shade = 1 - rng.uniform(0.25, 0.5) * (np.cos(angle - rng.uniform(0, 6.3)) > 0)
    if kind == 2:  # dark dots inside
        for _ in range(rng.integers(4, 10)):
            r, a = rng.uniform(0, 0.8) * radius, rng.uniform(0, 6.3)
            dy, dx = cy + r * np.sin(a), cx + r * np.cos(a)
            dot = np.exp(-((yy - dy) ** 2 + (xx - dx) ** 2) / (2 * rng.uniform(1.0, 1.8) ** 2))
            shade = shade - rng.uniform(0.4, 0.7) * dot
    if kind == 3:  # radial streaks
        spokes = rng.integers(6, 13)
        streak = np.cos(spokes * angle + rng.uniform(0, 6.3)) > 0.6
        shade = shade - rng.uniform(0.3, 0.55) * streak * (dist > 0.4 * radius)
    lesion = brown[None, None] * np.clip(shade, 0.1, 1.2)[..., None]
    img = skin[None, None] * (1 - inside[..., None]) + lesion * inside[..., None]
    for _ in range(rng.integers(0, 3)):  # hairs: thin dark lines through the image
        a, off = rng.uniform(0, np.pi), rng.uniform(-s / 2, s / 2)
        line = np.abs((xx - s / 2) * np.sin(a) - (yy - s / 2) * np.cos(a) - off) < 0.6
        img[line] *= 0.5
    img = img + rng.normal(0, 0.03, img.shape)
    return np.clip(img, 0, 1).astype(np.float32)


def warm_camera(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Dermatoscope B: a warm tint, a softer lens (3x3 blur), vignetting and more noise."""
    tint = torch.tensor([1.08, 0.95, 0.78]).view(1, 3, 1, 1)
    x = blur3(x * tint)
    s = x.shape[-1]
    r = torch.linspace(-1, 1, s)
    vignette = 1 - 0.25 * (r[:, None] ** 2 + r[None, :] ** 2)
    return (x * vignette + 0.04 * torch.randn(x.shape, generator=generator)).clamp(0, 1)


def blur3(x: torch.Tensor) -> torch.Tensor:
    """A 3x3 binomial blur per channel (edges replicated)."""
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16.0).expand(x.shape[1], 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])


LOADERS = {"digits": digits, "fashion": fashion, "lesions": lesions}
