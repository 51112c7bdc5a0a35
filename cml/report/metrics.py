"""Image measures for the check: how strong the intended change is, and how much content stayed."""

from __future__ import annotations

import numpy as np
from PIL import Image
from skimage.metrics import structural_similarity


def mean_saturation(img: Image.Image) -> float:
    """HSV saturation, 0..1: 0 for a grayscale image. The grayscale LoRA should lower it."""
    return float(np.asarray(img.convert("RGB").convert("HSV"))[..., 1].mean() / 255.0)


def mean_pixel_change(img: Image.Image, ref: Image.Image) -> float:
    """Mean absolute RGB difference to the weight-0 image, 0..1."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    b = np.asarray(ref.convert("RGB").resize(img.size), dtype=np.float32)
    return float(np.abs(a - b).mean() / 255.0)


def luminance_ssim(img: Image.Image, ref: Image.Image) -> float:
    """Structural similarity of the luminance: 1 when the content (shapes, layout) is unchanged."""
    a = np.asarray(img.convert("L"), dtype=np.float32)
    b = np.asarray(ref.convert("L").resize(img.size), dtype=np.float32)
    win = min(7, *a.shape) | 1  # odd window no larger than the image
    return float(structural_similarity(a, b, data_range=255.0, win_size=win))


def rgb_ssim(img: Image.Image, ref: Image.Image) -> float:
    """Colour SSIM, for the copy check (the copy LoRA should give back A, colours included)."""
    a = np.asarray(img.convert("RGB"), dtype=np.float32)
    b = np.asarray(ref.convert("RGB").resize(img.size, Image.Resampling.LANCZOS), dtype=np.float32)
    win = min(7, a.shape[0], a.shape[1]) | 1
    return float(structural_similarity(a, b, data_range=255.0, channel_axis=2, win_size=win))


# The effect measure that fits each built-in transform; images as B fall back to the mean pixel change.
EFFECTS = {
    "grayscale": ("mean_saturation", lambda img, ref: mean_saturation(img)),
    "sepia": ("mean_pixel_change", mean_pixel_change),
    "invert": ("mean_pixel_change", mean_pixel_change),
    "blur": ("mean_pixel_change", mean_pixel_change),
    None: ("mean_pixel_change", mean_pixel_change),
}
