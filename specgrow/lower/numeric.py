"""The numeric check: original vs grown logits on seeded random tokens.

Tolerance (per element, as `torch.testing.assert_close`): ``|a - b| <= atol + rtol * |a|``
with the values of `TOLERANCE` for the checkpoint's dtype; fp32 uses atol = rtol = 1e-4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from specgrow.models.reference import build
from specgrow.shape import ModelShape

TOLERANCE = {  # dtype -> (atol, rtol)
    torch.float32: (1e-4, 1e-4),
    torch.float64: (1e-9, 1e-9),
    torch.bfloat16: (5e-2, 5e-2),
    torch.float16: (1e-2, 1e-2),
}


@dataclass(frozen=True)
class NumericResult:
    passed: bool
    max_abs_diff: float
    atol: float
    rtol: float
    dtype: str
    tokens: tuple[int, int]
    seed: int

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"max |Δlogit| = {self.max_abs_diff:.3g} "
                f"({self.dtype} tolerance atol={self.atol:g}, rtol={self.rtol:g})")


def tokens_for(shape: ModelShape, seed: int, device) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    length = min(shape.positions, 16)
    return torch.randint(0, shape.vocab, (2, length), generator=gen).to(device)  # (B, T)


@torch.no_grad()
def logits(shape: ModelShape, state: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    return build(shape, state, device=tokens.device)(tokens).float()


def compare(reference: torch.Tensor, grown: torch.Tensor, dtype: torch.dtype, seed: int) -> NumericResult:
    atol, rtol = TOLERANCE.get(dtype, (1e-4, 1e-4))
    diff = (reference - grown).abs()
    passed = bool((diff <= atol + rtol * reference.abs()).all()) and bool(torch.isfinite(grown).all())
    return NumericResult(passed, float(diff.max()), atol, rtol, str(dtype).replace("torch.", ""),
                         tuple(reference.shape[:2]), seed)
