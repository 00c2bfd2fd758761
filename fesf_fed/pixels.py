"""Conversions between stored 8-bit pixels and float images in [0, 1].

Images are stored (caches, ImageSet, host banks) as uint8, like image files, and
computed on as float32 in [0, 1] on a torch device.
"""

import numpy as np
import torch


def unit_to_uint8(images: np.ndarray) -> np.ndarray:
    """Quantise float images in [0, 1] to uint8 (values outside are clipped)."""
    return np.round(np.clip(images, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_unit_float(images: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Move images to ``device`` as float32 in [0, 1]: uint8 is scaled, float is only moved."""
    batch = torch.as_tensor(images).to(device)
    return batch.float().div_(255) if batch.dtype == torch.uint8 else batch.float()


def tensor_to_uint8(images: torch.Tensor) -> np.ndarray:
    """Quantise float images in [0, 1] to uint8 on the CPU, as an image file would."""
    return images.mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()
