"""RoPE frequencies, with the rope scalings of HuggingFace configs (numpy only, no torch).

``frequencies(width, theta, scaling, positions, length)`` gives the inverse frequency of each
rotary pair of a head of ``width`` dims and the factor on cos and sin. Every forward of
specgrow (the reference model, the numeric check, the float64 witnesses) reads them here,
so each scaling has one meaning. The formulas are those of transformers'
``modeling_rope_utils`` (default, ``linear``, ``dynamic``, ``yarn``, ``llama3``):

* default: ``inv_freq_i = theta^(-2i/width)``;
* ``linear``: ``inv_freq / factor``;
* ``llama3``: by wavelength ``2 pi / inv_freq``: above ``context / low_freq_factor`` divided by
  ``factor``, below ``context / high_freq_factor`` kept, smoothed in between. A function of the
  frequency alone, so a placement that keeps each old frequency keeps its scaled value;
* ``dynamic``: beyond ``positions`` tokens the base becomes
  ``theta * (factor * length / positions - (factor - 1))^(width / (width - 2))``, which
  depends on the width itself;
* ``yarn``: a ramp between ``inv_freq`` and ``inv_freq / factor`` over the pair index, between
  correction dims proportional to the width (rounded to whole dims), and cos and sin times an
  attention factor: it also depends on the width itself.

>>> [round(float(f), 6) for f in frequencies(4, 10000.0, (), 16, 8)[0]]
[1.0, 0.01]
>>> frequencies(4, 10000.0, (("factor", 2.0), ("type", "linear")), 16, 8)[0].tolist()
[0.5, 0.005]
"""

from __future__ import annotations

import math

import numpy as np

WIDTH_DEPENDENT = ("yarn", "dynamic")  # scalings whose frequencies depend on the head width itself


def frequencies(width: int, theta: float, scaling: tuple, positions: int, length: int) -> tuple[np.ndarray, float]:
    """``(inv_freq (width/2,) float64, attention factor)`` of one head of ``width`` rotary dims.

    ``scaling``: the model's rope scaling as sorted ``(key, value)`` pairs (``()``: none);
    ``positions``: the model's ``max_position_embeddings``; ``length``: the sequence length.
    """
    params = dict(scaling)
    kind = params.get("type")
    index = np.arange(0, width, 2, dtype=np.float64) / width
    base = float(theta)
    if kind == "dynamic" and length > positions:
        factor = params["factor"]
        base = base * ((factor * length / positions) - (factor - 1)) ** (width / (width - 2))
    inv_freq = 1.0 / base ** index
    if kind is None or kind == "dynamic":
        return inv_freq, 1.0
    factor = float(params["factor"])
    if kind == "linear":
        return inv_freq / factor, 1.0
    if kind == "llama3":
        return _llama3(inv_freq, factor, params, positions), 1.0
    if kind == "yarn":
        return _yarn(width, base, factor, params, positions)
    raise ValueError(f"unknown rope scaling {kind!r}")


def _llama3(inv_freq: np.ndarray, factor: float, params: dict, positions: int) -> np.ndarray:
    context = params.get("original_max_position_embeddings") or positions  # as transformers fills it in
    low, high = params["low_freq_factor"], params["high_freq_factor"]
    wavelength = 2 * math.pi / inv_freq
    scaled = np.where(wavelength > context / low, inv_freq / factor, inv_freq)
    smooth = (context / wavelength - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelength < context / high) & ~(wavelength > context / low)
    return np.where(medium, smoothed, scaled)


def _yarn(width: int, base: float, factor: float, params: dict, positions: int) -> tuple[np.ndarray, float]:
    context = params.get("original_max_position_embeddings") or positions
    attention = params.get("attention_factor")
    if attention is None:
        mscale, mscale_all = params.get("mscale"), params.get("mscale_all_dim")
        attention = _mscale(factor, mscale) / _mscale(factor, mscale_all) if mscale and mscale_all \
            else _mscale(factor)
    fast, slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1

    def dim_of(rotations):  # the dim whose wavelength fits ``rotations`` times in the context
        return width * math.log(context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(fast), dim_of(slow)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, width - 1)
    if low == high:
        high += 0.001
    ramp = np.clip((np.arange(width // 2, dtype=np.float64) - low) / (high - low), 0, 1)
    extrapolation = 1 - ramp
    pos_freqs = base ** (np.arange(0, width, 2, dtype=np.float64) / width)
    inv_freq = (1 / (factor * pos_freqs)) * (1 - extrapolation) + (1 / pos_freqs) * extrapolation
    return inv_freq, float(attention)


def _mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def angles(width: int, theta: float, scaling: tuple, positions: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """``(cos, sin)`` (length, width) float64 in the ``rotate_half`` layout, times the attention factor."""
    inv_freq, attention = frequencies(width, theta, scaling, positions, length)
    phase = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
    phase = np.concatenate([phase, phase], axis=-1)
    return np.cos(phase) * attention, np.sin(phase) * attention
