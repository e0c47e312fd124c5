"""The numeric check: original vs grown logits on seeded random tokens.

Logits come from `streamed_logits`, the reference semantics computed from a *source*
(`specgrow.lower.stream`) with every weight read band by band, so checking a large
checkpoint holds activations and one band of weights, never the model. The grown side is
read back from the files just written: the check covers the bytes on disk.

Tolerance (per element, as `torch.testing.assert_close`): ``|a - b| <= atol + rtol * |a|``
with the values of `TOLERANCE` for the checkpoint's dtype; fp32 uses atol = rtol = 1e-4.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from specgrow.lower.stream import StateSource, bands, whole
from specgrow.models.reference import activate, attend, mixture, normalize, run_expert, softcap, sublayer
from specgrow.shape import GATED, QK_NORM_GAINS, ModelShape

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


def tokens_for(shape: ModelShape, seed: int, device, window: int | None = None) -> torch.Tensor:
    """Two seeded sequences of up to 16 tokens (no longer than a sliding-attention window)."""
    gen = torch.Generator().manual_seed(seed)
    length = min(shape.positions, 16, window or 16)
    return torch.randint(0, shape.vocab, (2, length), generator=gen).to(device)  # (B, T)


def logits(shape: ModelShape, state: dict[str, torch.Tensor], tokens: torch.Tensor) -> torch.Tensor:
    """Logits of an in-memory state dict with the reference model's tensor names."""
    return streamed_logits(shape, StateSource.of_state(state, shape), tokens)


@torch.no_grad()
def streamed_logits(shape: ModelShape, source, tokens: torch.Tensor, band_bytes: int = 8 << 20) -> torch.Tensor:
    """Logits (B, T, vocab) in fp32, reading each weight from ``source`` band by band."""
    device = tokens.device

    def vector(role, layer=None):
        return whole(source, (role, layer)).to(device).float()

    def linear(x, prefix, layer=None, key=None):  # x @ W.T (+ b); W read in bands of rows
        key = key or (f"{prefix}.weight", layer)
        out = [x @ source.rows(key, a, b).to(device).float().T for a, b in bands(source, key, band_bytes)]
        y = torch.cat(out, dim=-1)
        return y + vector(f"{prefix}.bias", layer) if shape.has_role(f"{prefix}.bias") else y

    def norm(x, prefix, layer=None):
        bias = vector(f"{prefix}.bias", layer) if shape.norm == "layernorm" else None
        return normalize(x, shape.norm, shape.norm_eps, vector(f"{prefix}.weight", layer), bias, shape.norm_offset)

    def norm_of(prefix, layer):  # the norm ``prefix`` of a layer as a function, None if absent
        return (lambda x: norm(x, prefix, layer)) if shape.has_role(f"{prefix}.weight") else None

    def attention(h, i, s):
        gains = [vector(role, i) for role in QK_NORM_GAINS.get(shape.qk_norm, ())] or [None, None]
        heads = attend(linear(h, "attn.q", i), linear(h, "attn.k", i), linear(h, "attn.v", i), s, shape, *gains)
        return linear(heads, "attn.o", i)

    def experts(h, i, s):
        def expert(e, xs):  # one expert's tensors read at a time
            w = {role: source.rows((f"mlp.experts.{role}.weight", i), e, e + 1)[0].to(device).float()
                 for role in ("up", "gate", "down") if shape.has_role(f"mlp.experts.{role}.weight", i)}
            return run_expert(shape.activation, xs, w["up"], w.get("gate"), w["down"])

        return mixture(h, linear(h, "mlp.router", i), s.top_k, shape.renormalize, expert)

    def mlp(h, i):
        if shape.layers[i].experts:
            return experts(h, i, shape.layers[i])
        gate = linear(h, "mlp.gate", i) if shape.activation in GATED else None
        return linear(activate(shape.activation, linear(h, "mlp.up", i), gate), "mlp.down", i)

    x = _embed(source, tokens, shape.hidden, band_bytes)  # (B, T, h)
    if shape.embed_scale:  # sqrt(hidden) rounded to the checkpoint's dtype, as transformers' Gemma computes it
        x = x * torch.tensor(shape.hidden ** 0.5, dtype=source.dtype(("embed.weight", None))).float()
    if shape.position == "learned":
        x = x + source.rows(("pos.weight", None), 0, tokens.shape[1]).to(device).float()
    for i, s in enumerate(shape.layers):
        attn = sublayer(lambda h: attention(h, i, s), x, norm_of("attn_norm", i), norm_of("attn_post_norm", i))
        if not shape.parallel_residual:  # parallel: the MLP reads the layer's input too
            x, attn = x + attn, 0.0
        x = x + attn + sublayer(lambda h: mlp(h, i), x, norm_of("mlp_norm", i), norm_of("mlp_post_norm", i))
    if shape.final_norm:
        x = norm(x, "final_norm")
    head = ("embed.weight", None) if shape.tie_embeddings else ("unembed.weight", None)
    return softcap(linear(x, "unembed", key=head), shape.logit_softcap)


def _embed(source, tokens: torch.Tensor, hidden: int, band_bytes: int) -> torch.Tensor:
    """The embedding rows of ``tokens``, gathered band by band."""
    x = torch.zeros(tokens.shape + (hidden,), device=tokens.device)
    for a, b in bands(source, ("embed.weight", None), band_bytes):
        hit = (tokens >= a) & (tokens < b)
        if hit.any():
            x[hit] = source.rows(("embed.weight", None), a, b).to(tokens.device).float()[tokens[hit] - a]
    return x


def compare(reference: torch.Tensor, grown: torch.Tensor, dtype: torch.dtype, seed: int) -> NumericResult:
    atol, rtol = TOLERANCE.get(dtype, (1e-4, 1e-4))
    diff = (reference - grown).abs()
    passed = bool((diff <= atol + rtol * reference.abs()).all()) and bool(torch.isfinite(grown).all())
    return NumericResult(passed, float(diff.max()), atol, rtol, str(dtype).replace("torch.", ""),
                         tuple(reference.shape[:2]), seed)
