"""Batched augmentations on float tensors [B, 1, H, W] in [0, 1], written with torch only (no torchvision).

Random numbers are drawn on the batch's device, so a CUDA batch stays on CUDA."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def random_affine(x: torch.Tensor, max_rotation_deg: float = 10.0, scale: tuple[float, float] = (0.9, 1.1),
                  max_shift: float = 0.08, flip: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Random flip, rotation, scale and shift in one ``grid_sample`` call (border padding)."""
    batch = x.shape[0]
    rand = lambda *shape: torch.rand(*shape, generator=generator, device=x.device)  # noqa: E731
    angle = (rand(batch) * 2 - 1) * math.radians(max_rotation_deg)
    zoom = scale[0] + rand(batch) * (scale[1] - scale[0])
    shift = (rand(batch, 2) * 2 - 1) * max_shift * 2
    mirror = torch.where(rand(batch) < 0.5, -1.0, 1.0) if flip else torch.ones(batch, device=x.device)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos * mirror, -sin, shift[:, 0]], 1), torch.stack([sin * mirror, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def weak_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    return random_affine(x, generator=generator)


def _some(x: torch.Tensor, probability: float, changed: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """``changed`` for a random ``probability`` share of the samples, ``x`` for the rest."""
    chosen = torch.rand(len(x), generator=g, device=x.device).view(-1, 1, 1, 1) < probability
    return torch.where(chosen, changed, x)


def _low_resolution(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    """Down to a random 12-36 px and back: small, blurred or heavily compressed faces."""
    size = int(torch.randint(12, 37, (1,), generator=g, device=x.device))
    small = F.interpolate(x, size=(size, size), mode="area")
    return F.interpolate(small, size=x.shape[-2:], mode="bilinear", align_corners=False)


def domain_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The labeled view against the gap between FER2013 and other sources: framing jitter (a wider affine), then per
    sample and at random illumination (brightness, contrast, gamma), low resolution or blur, sensor noise and a small
    occluder. Each change keeps the face recognisable: the expression label still holds."""
    g = generator
    x = random_affine(x, max_rotation_deg=15.0, scale=(0.85, 1.15), max_shift=0.1, generator=g)
    x = _some(x, 0.5, _brightness(x, g), g)
    x = _some(x, 0.5, _contrast(x, g), g)
    x = _some(x, 0.5, _gamma(x, g), g).clamp(0.0, 1.0)
    x = _some(x, 0.25, _low_resolution(x, g), g)
    x = _some(x, 0.25, _noise(x, g), g).clamp(0.0, 1.0)
    return _some(x, 0.2, cutout(x, fraction=0.25, generator=g), g)


def _per_sample(x: torch.Tensor, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    batch = len(x)
    return (low + torch.rand(batch, generator=generator, device=x.device) * (high - low)).view(batch, 1, 1, 1)


def _brightness(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return x * _per_sample(x, 0.6, 1.4, g)


def _contrast(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _per_sample(x, 0.6, 1.4, g) + mean


def _gamma(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return x.clamp_min(1e-4) ** _per_sample(x, 0.6, 1.6, g)


def _sharpness(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    blurred = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, 1)
    return blurred + (x - blurred) * _per_sample(x, 0.0, 2.5, g)


def _posterize(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    levels = 2 ** torch.randint(3, 6, (len(x), 1, 1, 1), generator=g, device=x.device).float()
    return torch.floor(x * levels) / levels


def _solarize(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    threshold = _per_sample(x, 0.6, 1.0, g)
    return torch.where(x >= threshold, 1.0 - x, x)


def _autocontrast(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    low = x.amin(dim=(1, 2, 3), keepdim=True)
    high = x.amax(dim=(1, 2, 3), keepdim=True)
    return (x - low) / (high - low).clamp_min(1e-3)


def _noise(x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return x + torch.randn(x.shape, generator=g, device=x.device) * _per_sample(x, 0.0, 0.06, g)


PHOTOMETRIC_OPS = (_brightness, _contrast, _gamma, _sharpness, _posterize, _solarize, _autocontrast, _noise)


def cutout(x: torch.Tensor, fraction: float = 0.4, generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero-mean grey square of side ``fraction * size`` at a random centre per sample."""
    batch, _, height, width = x.shape
    side = int(round(fraction * height))
    cy = torch.randint(0, height, (batch, 1, 1), generator=generator, device=x.device)
    cx = torch.randint(0, width, (batch, 1, 1), generator=generator, device=x.device)
    ys = torch.arange(height, device=x.device).view(1, height, 1)
    xs = torch.arange(width, device=x.device).view(1, 1, width)
    mask = ((ys - cy).abs() <= side // 2) & ((xs - cx).abs() <= side // 2)
    return x.masked_fill(mask.unsqueeze(1), 0.5)


def strong_augment(x: torch.Tensor, num_ops: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    """RandAugment-style: a stronger affine, ``num_ops`` random photometric ops per sample, then Cutout."""
    x = random_affine(x, max_rotation_deg=25.0, scale=(0.8, 1.2), max_shift=0.12, generator=generator)
    batch = len(x)
    for _ in range(num_ops):
        choice = torch.randint(0, len(PHOTOMETRIC_OPS), (batch,), generator=generator, device=x.device)
        out = x.clone()
        for index, op in enumerate(PHOTOMETRIC_OPS):
            selected = choice == index
            if selected.any():
                out[selected] = op(x[selected], generator)
        x = out.clamp(0.0, 1.0)
    return cutout(x, generator=generator)
