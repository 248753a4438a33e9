"""JPEG re-encoding (``jpeg``): the upload path of most shops, and a classic input transformation
(Dziugaite et al. 2016; Guo et al. 2018), broken by BPDA (Athalye et al. 2018)."""

from __future__ import annotations

import io
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from advrec_common.errors import InvalidInput
from advrec_common.vision.defenses.base import Defense


def jpeg_roundtrip(images_u8: np.ndarray, quality: int) -> np.ndarray:
    """(N,H,W,3) uint8 -> the same after PIL JPEG encode/decode at ``quality`` (1..95)."""
    out = np.empty_like(images_u8)
    for i, img in enumerate(images_u8):  # PIL encodes one image at a time
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


class Jpeg(Defense):
    """Round to 8 bits, encode as JPEG at ``quality`` with PIL (libjpeg), decode. Gradient: BPDA."""

    kind: ClassVar[str] = "jpeg"
    gradient: ClassVar[str] = "bpda"

    def __init__(self, quality: int = 75):
        super().__init__()
        if not 1 <= int(quality) <= 95:
            raise InvalidInput(f"jpeg quality must lie in 1..95, got {quality}")
        self.quality = int(quality)

    def transform(self, x: torch.Tensor) -> torch.Tensor:
        u8 = (x.detach().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        back = torch.from_numpy(jpeg_roundtrip(u8, self.quality)).permute(0, 3, 1, 2)
        return back.to(x.device, x.dtype) / 255.0

    def config(self) -> dict[str, Any]:
        return {"quality": self.quality}
