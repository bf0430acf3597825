"""A small but real demo site: scikit-learn's bundled handwritten digits written as DICOM.

1,797 real 8x8 digit scans become Secondary Capture images of synthetic patients, acquired on
two imaging devices with different acquisition signatures, so that "forget every image of one
device" is a meaningful request (a model retrained without that device still generalises to it,
imperfectly):

* ``Acme DX-100`` (Acme Imaging): 16x16, 8-bit MONOCHROME2, linear response.
* ``Borealis CR-7`` (Borealis Medical): 24x24, 12-bit MONOCHROME1 (stored inverted) with a
  rescale slope/intercept, a compressive (gamma 0.5) detector response, blur and sensor noise.

Correct decoding must undo the storage differences (inversion, rescale); the response, blur and
noise remain as the device's real signature. Labels and the train/held-out split (by patient)
go to ``labels.csv`` keyed by SOPInstanceUID, as a site's label export would.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEVICES = {
    "Acme DX-100": {"manufacturer": "Acme Imaging", "serial": "ADX-0042", "size": 16},
    "Borealis CR-7": {"manufacturer": "Borealis Medical", "serial": "BCR-7781", "size": 24},
}
FORGET_DEVICE = "Borealis CR-7"


@dataclass
class DemoSite:
    root: Path
    labels_csv: Path
    n_images: int
    n_patients: int


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(img).float()[None, None]
    return F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)[0, 0].numpy()


def _blur(img: np.ndarray) -> np.ndarray:
    kernel = np.array([1.0, 2.0, 1.0]) / 4.0
    padded = np.pad(img, 1, mode="edge")
    rows = kernel[0] * padded[:-2] + kernel[1] * padded[1:-1] + kernel[2] * padded[2:]
    return kernel[0] * rows[:, :-2] + kernel[1] * rows[:, 1:-1] + kernel[2] * rows[:, 2:]


def acquire(digit: np.ndarray, device: str, rng: np.random.Generator) -> np.ndarray:
    """The image the device would measure, as intensities in [0, 1] (before storage)."""
    img = _resize(digit / 16.0, DEVICES[device]["size"]).clip(0, 1)
    if device == FORGET_DEVICE:
        img = _blur(img) ** 0.5
        img = img + rng.normal(0.0, 0.12, img.shape)
    return img.clip(0, 1)


def build_demo_site(
    root: str | Path, *, n_patients: int = 48, heldout_fraction: float = 0.25, seed: int = 0
) -> DemoSite:
    """Write the demo site under ``root`` (created) and return where its parts are."""
    from highdicom.sc import SCImage
    from pydicom.uid import generate_uid
    from sklearn.datasets import load_digits

    root = Path(root)
    images_dir = root / "dicom"
    images_dir.mkdir(parents=True, exist_ok=True)
    digits = load_digits()
    rng = np.random.default_rng(seed)
    patient_of = rng.integers(0, n_patients, len(digits.images))
    device_names = list(DEVICES)
    # Each patient is scanned on one device; about a third of the patients on the retiring one.
    patient_device = [device_names[int(rng.random() < 0.35)] for _ in range(n_patients)]
    heldout_patients = set(
        rng.permutation(n_patients)[: round(n_patients * heldout_fraction)].tolist()
    )

    def uid(*parts: object) -> str:
        return generate_uid(entropy_srcs=["revise-demo", str(seed), *map(str, parts)])

    rows = []
    for i, (digit, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        p = int(patient_of[i])
        device = patient_device[p]
        spec = DEVICES[device]
        img = acquire(digit, device, rng)
        if device == FORGET_DEVICE:  # 12-bit, stored inverted, value = 0.5 * stored - 100
            stored = np.round((1.0 - img) * 4095).astype(np.uint16)
            photometric, bits = "MONOCHROME1", 16
        else:
            stored = np.round(img * 255).astype(np.uint8)
            photometric, bits = "MONOCHROME2", 8
        sop_uid = uid("sop", i)
        image = SCImage(
            pixel_array=stored,
            photometric_interpretation=photometric,
            bits_allocated=bits,
            coordinate_system="PATIENT",
            study_instance_uid=uid("study", p),
            series_instance_uid=uid("series", p, device),
            series_number=1,
            sop_instance_uid=sop_uid,
            instance_number=i + 1,
            manufacturer=spec["manufacturer"],
            patient_id=f"DEMO-{p:04d}",
            patient_name=f"Demo^Patient{p:02d}",
            patient_birth_date=f"19{50 + p % 40:02d}0{1 + p % 9}15",
            patient_sex="O",
            study_date=f"20{18 + p % 6}0{1 + p % 9}1{p % 10}",
            patient_orientation=("L", "P"),
        )
        image.ManufacturerModelName = device
        image.DeviceSerialNumber = spec["serial"]
        image.BodyPartExamined = "HAND"
        if device == FORGET_DEVICE:
            image.BitsStored, image.HighBit = 12, 11
            image.RescaleSlope, image.RescaleIntercept, image.RescaleType = 0.5, -100, "US"
        path = images_dir / f"{p:02d}" / f"img{i:04d}.dcm"
        path.parent.mkdir(exist_ok=True)
        image.save_as(path)
        split = "heldout" if p in heldout_patients else "train"
        rows.append((sop_uid, int(label), split))
    labels_csv = root / "labels.csv"
    with labels_csv.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["sop_instance_uid", "label", "split"])
        writer.writerows(rows)
    return DemoSite(root=root, labels_csv=labels_csv, n_images=len(rows), n_patients=n_patients)
