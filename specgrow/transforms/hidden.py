"""Expansion 5: residual width h -> h', all layers at once.

``zero`` keeps every residual stream of the form ``[x, 0]``: new embedding/position
columns (``embed``/``pos``) and new output rows of every matrix that writes the stream
(``write``, ``bias``) must be zero; new input columns of every matrix that reads it
(``read``) may be anything. RMSNorm over ``[x, 0]`` sees a mean over h' instead of h,
which gain * sqrt(h/h') **and** eps * h/h' absorb (``rescale: gain-and-eps``).

``duplicate`` (h' = m*h) keeps every stream of the form ``[x, ..., x]``, which RMSNorm and
LayerNorm both map to ``[y, ..., y]`` with the same eps: writers and norm parameters are
copied, readers take 1/m of each copy (plus cancelling noise). With tied embeddings the
unembedding reads the copied table, so the final norm's gain and bias take the 1/m.

With ``embed_scale`` (Gemma: embeddings times sqrt(hidden), computed from the config) the
embedding table is stored times sqrt(h/h') so that the stream keeps its values; a tied
unembedding then reads a table sqrt(h/h') smaller, which the final norm's gain takes back.
With ``norm_offset`` 1 (gains stored as w, the gain being 1 + w) a gain rescaled by c is
stored as c*w + (c - 1).
"""

from __future__ import annotations

import functools

from dataclasses import replace

import sympy

from specgrow.ir import Range, sym
from specgrow.shape import GLOBAL_ROLES, LAYER_ROLES, NORM_BIASES, NORM_GAINS
from specgrow.transforms.common import Grown, Segment, grow_tensor, layer_dims, pad

h, dh = sym("h"), sym("dh")


def _kind(role, spaces):
    """How a tensor touches the residual stream: embed, pos, gain, bias, read or write."""
    if role in ("embed.weight", "pos.weight"):
        return role.split(".")[0]
    if role in NORM_GAINS:
        return "gain"
    if role in NORM_BIASES or len(spaces) == 1:
        return "bias"
    return "read" if spaces[-1] == "residual" else "write"  # [out, in]: the last axis is read


def compile_step(step, shape, ctx):
    duplicate = step.method == "duplicate"
    m = step.to // shape.hidden
    new = sympy.Integer(m) * h if duplicate else h + dh
    rms_rescale = shape.norm == "rmsnorm" and not duplicate and step.rescale != "none"
    gain_scale = sympy.sqrt(h / new) if rms_rescale else 1
    eps_scale = h / new if rms_rescale and step.rescale == "gain-and-eps" else 1
    embed_scale = sympy.sqrt(h / new) if shape.embed_scale else 1
    edits = []
    tensors = [(role, None, GLOBAL_ROLES[role]) for role in GLOBAL_ROLES]
    for i in range(len(shape.layers)):
        tensors += [(role, i, LAYER_ROLES[role]) for role in LAYER_ROLES]
    for role, layer, spaces in tensors:
        if "residual" not in spaces or not shape.has_role(role, layer):
            continue
        kind = _kind(role, spaces)
        dims = dict(layer_dims(shape, layer), dh=step.to - shape.hidden)
        tied_final = shape.tie_embeddings and role.startswith("final_norm.")
        scale = _scale(kind, tied_final, gain_scale, embed_scale)
        if duplicate:
            segments = _copies(m, kind, tied_final, scale, shape.norm_offset)
        else:
            segments = pad(h, new, kind, scale=scale, shift=_shift(kind, scale, shape.norm_offset))
        grow = {"residual": (new, segments)}
        edits.append(grow_tensor(ctx, shape, role, layer, grow, dims, noise_std=step.noise))
    eps = shape.norm_eps * shape.hidden / step.to if eps_scale != 1 else shape.norm_eps
    after = replace(shape, hidden=step.to, norm_eps=eps)
    eps_dims = (("dh", step.to - shape.hidden), ("h", shape.hidden))
    return Grown(tuple(edits), after, eps_scale, eps_dims)


def _scale(kind, tied_final, gain_scale, embed_scale):
    """The factor on a tensor's old values: zero-pad gains take gain_scale; with embed_scale the
    embedding takes it, and a tied final norm (gain and bias) gives it back."""
    scale = gain_scale if kind == "gain" else 1
    if kind == "embed":
        scale = scale * embed_scale
    if tied_final and embed_scale != 1:
        scale = scale / embed_scale
    return scale


def _shift(kind, scale, offset):
    """A stored (offset + w) gain rescaled by c: c*w + offset*(c - 1)."""
    return sympy.nsimplify(offset) * (scale - 1) if kind == "gain" and offset else 0


@functools.lru_cache(maxsize=256)
def _copies(m, kind, tied_final, scale, offset):
    """m copies of the old h indices, times ``scale``; readers (and a tied model's final norm) take 1/m."""
    if kind == "read" or tied_final:
        scale = scale * sympy.Rational(1, m)
    shift = _shift(kind, scale, offset)
    segments = []
    for i in range(m):
        noise = None
        if kind == "read" and (m % 2 == 0 or i < m - 1):
            noise = (i // 2, 1 if i % 2 == 0 else -1)
        segments.append(Segment(Range(i * h, (i + 1) * h), Range(0, h), scale=scale, noise=noise, shift=shift))
    return tuple(segments)
