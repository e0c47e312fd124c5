"""A float64 witness for a nonzero residual, computed with numpy alone (no torch).

`random_state` draws a model of a `ModelShape`, `grow` runs one `StepPlan` on it with the
meaning of the executor (`specgrow.lower.stream.StepSource`), and `logits` is the forward
of the reference model (`specgrow.models.reference`). `find_witness` grows random models
through some steps and compares the logits on seeded tokens.

Why float64 and a relative bound: float64 rounding of these small forwards moves the
logits by about 1e-14 relative, while the smallest real change the prover must confirm,
a missing RMSNorm eps rescale with eps 1e-6, moves them by about 1e-6 relative. A
difference counts when ``max|Δ| > RELATIVE * max(1, max|reference logit|)`` with
``RELATIVE = 1e-9``: five orders of magnitude above rounding, three below that change.
(In float32, rounding alone is about 1e-7 relative: it can fake a change and hide a real one.)

Random draws come from ``numpy.random.default_rng`` (not torch's generator): a witness is
reproduced with this module, not with `specgrow apply`. Duplicate noise depends only on
the noise seed and the block's shape, so the two blocks of a cancelling pair draw the
same values, as in the executor.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from specgrow.ir import Const, Grouped, Old, Random, Range, StepPlan, TensorEdit
from specgrow.rope import angles
from specgrow.shape import GATED, NORM_GAINS, ModelShape
from specgrow.verify.result import Counterexample

RELATIVE = 1e-9  # a logit difference counts above RELATIVE * max(1, max|logit|)
SEEDS = 3  # model seeds tried: seed, seed + 1, seed + 2
GAINS = (1.0, 4.0, 16.0)  # every norm gain of the random model times these, in turn
BIASES = (1.0, 10.0)  # every bias of the random model times these, in turn
BATCH, LENGTH = 2, 8  # token sequences compared, and their length at most
SHOWN = 4  # logits of each model reported in a witness

State = dict  # (role, layer) -> np.ndarray, float64


# ---------------------------------------------------------------- random models
def random_state(shape: ModelShape, seed: int, gain: float = 1.0, bias: float = 1.0) -> State:
    """A seeded float64 model keyed like ``shape.tensor_shapes()``.

    Matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm gains ``gain * (1 + 0.1 N)``,
    biases (of norms and projections) ``bias * 0.1 N``.
    """
    rng = np.random.default_rng(seed)
    state = {}
    for (role, layer), dims in shape.tensor_shapes().items():
        noise = rng.standard_normal(dims)
        if role in NORM_GAINS:  # stored: the gain is norm_offset + value
            value = gain * (1 + 0.1 * noise) - shape.norm_offset
        elif role.endswith(".bias"):
            value = bias * 0.1 * noise
        elif role in ("embed.weight", "pos.weight"):
            value = noise
        else:
            value = noise / math.sqrt(dims[-1])
        state[(role, layer)] = value
    return state


# ---------------------------------------------------------------- growing
def grow(state: State, step_plan: StepPlan) -> State:
    """The state after one step: edited tensors rebuilt, sources not re-emitted dropped, the rest kept."""
    step = _concrete(step_plan)
    edits = {(e.role, e.layer): e for e in step.edits}
    consumed = {e.source for e in step.edits if e.source is not None}
    grown = {key: value for key, value in state.items() if key not in consumed and key not in edits}
    for key, edit in edits.items():
        grown[key] = _build(state, edit)
    return grown


def _concrete(step: StepPlan) -> StepPlan:
    """The step with plain ints and floats (evaluated only when it still holds expressions)."""
    plain = all(type(n) is int for edit in step.edits for n in edit.new_shape) and all(
        isinstance(b.source.scale, (int, float)) for edit in step.edits for b in edit.blocks
        if isinstance(b.source, Old))
    return step if plain else step.concrete()


def _build(state: State, edit: TensorEdit) -> np.ndarray:
    """One grown tensor: every block written where its selections say (NaN where none does)."""
    out = np.full(edit.new_shape, np.nan)
    for block in edit.blocks:
        where = tuple(_select(sel) for sel in block.where)
        out[np.ix_(*where)] = _value(state, edit, block.source, tuple(len(ix) for ix in where))
    return out


def _value(state: State, edit: TensorEdit, src, shape: tuple[int, ...]):
    """The values of one block of ``shape``, as `StepSource._value` makes them."""
    if isinstance(src, Const):
        return float(src.value)
    if isinstance(src, Random):
        rng = np.random.default_rng(src.seed)
        if src.dist == "uniform":
            return (rng.random(shape) * 2 - 1) * src.param
        if src.dist == "normal":
            return rng.standard_normal(shape) * src.param
        mean, std = _moments(state[src.like])
        return rng.standard_normal(shape) * (std * src.param) + mean
    if not isinstance(src, Old):
        raise TypeError(f"unknown block source {src!r}")
    value = state[edit.source][np.ix_(*(_select(sel) for sel in src.index))] * src.scale + src.shift
    if src.noise is not None:
        draw = np.random.default_rng(src.noise.seed).standard_normal(shape)
        value = value + src.noise.sign * src.noise.std * draw
    return value


def _moments(tensor: np.ndarray) -> tuple[float, float]:
    """Mean and unbiased std (0 for one element) of a whole tensor."""
    std = float(np.std(tensor, ddof=1)) if tensor.size > 1 else 0.0
    return float(np.mean(tensor)), std


def _select(sel) -> np.ndarray:
    """The indices of a concrete selection, in order (`Grouped`: group-major)."""
    if isinstance(sel, Range):
        return np.arange(sel.start, sel.stop, sel.step)
    if isinstance(sel, Grouped):
        inner = np.arange(sel.inner.start, sel.inner.stop, sel.inner.step)
        return (np.arange(sel.groups)[:, None] * sel.width + inner[None, :]).reshape(-1)  # (groups * inner,)
    raise TypeError(f"unknown selection {sel!r}")


# ---------------------------------------------------------------- the forward
def logits(shape: ModelShape, state: State, tokens: np.ndarray) -> np.ndarray:
    """Logits (B, T, vocab) of the reference model holding ``state`` on ``tokens`` (B, T)."""
    x = state[("embed.weight", None)][tokens]  # (B, T, h)
    if shape.embed_scale:
        x = x * math.sqrt(shape.hidden)
    if shape.position == "learned":
        x = x + state[("pos.weight", None)][:tokens.shape[1]]
    for i, s in enumerate(shape.layers):
        attn = _sublayer(shape, state, x, i, "attn", lambda h: _attention(shape, state, i, h))
        if not shape.parallel_residual:  # parallel: the MLP reads the layer's input too
            x, attn = x + attn, 0.0
        x = x + attn + _sublayer(shape, state, x, i, "mlp", lambda h: _mlp(shape, state, i, h))
    if shape.final_norm:
        x = _norm(shape, state, x, "final_norm", None)
    head = state[("embed.weight", None) if shape.tie_embeddings else ("unembed.weight", None)]
    return _softcap(x @ head.T, shape.logit_softcap)  # (B, T, vocab)


def _softcap(x: np.ndarray, cap: float | None) -> np.ndarray:
    return x if cap is None else cap * np.tanh(x / cap)


def _sublayer(shape: ModelShape, state: State, x: np.ndarray, layer: int, name: str, f) -> np.ndarray:
    """What sublayer ``name`` adds to the stream: ``post(f(pre(x)))``, with the norms the model has."""
    if shape.has_role(f"{name}_norm.weight"):
        x = _norm(shape, state, x, f"{name}_norm", layer)
    y = f(x)
    if shape.has_role(f"{name}_post_norm.weight"):
        y = _norm(shape, state, y, f"{name}_post_norm", layer)
    return y


def _mlp(shape: ModelShape, state: State, layer: int, h: np.ndarray) -> np.ndarray:
    s = shape.layers[layer]
    if s.experts:
        return _mixture(shape, state, layer, s, h)
    gate = _linear(shape, state, h, "mlp.gate", layer) if shape.activation in GATED else None
    return _linear(shape, state, _activate(shape.activation, _linear(shape, state, h, "mlp.up", layer), gate),
                   "mlp.down", layer)


def _mixture(shape: ModelShape, state: State, layer: int, s, h: np.ndarray) -> np.ndarray:
    """The experts' sum, each token's top_k experts weighted by their softmax probabilities
    (renormalised to sum 1 with ``renormalize``); a stable sort breaks ties by expert index."""
    logits = h @ state[("mlp.router.weight", layer)].T  # (..., E)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True)
    chosen = np.argsort(-probs, axis=-1, kind="stable")[..., :s.top_k]  # (..., k)
    weights = np.take_along_axis(probs, chosen, -1)
    if shape.renormalize:
        weights = weights / weights.sum(-1, keepdims=True)
    out = np.zeros_like(h)
    gate_of = state.get(("mlp.experts.gate.weight", layer))
    for e in range(s.experts):
        w = (weights * (chosen == e)).sum(-1)[..., None]  # (..., 1): 0 where e is not chosen
        gate = h @ gate_of[e].T if gate_of is not None else None
        up = h @ state[("mlp.experts.up.weight", layer)][e].T
        out = out + w * (_activate(shape.activation, up, gate) @ state[("mlp.experts.down.weight", layer)][e].T)
    return out


def _linear(shape: ModelShape, state: State, x: np.ndarray, prefix: str, layer: int | None) -> np.ndarray:
    """``x @ W.T (+ b)``: (..., in) -> (..., out)."""
    y = x @ state[(f"{prefix}.weight", layer)].T
    return y + state[(f"{prefix}.bias", layer)] if shape.has_role(f"{prefix}.bias") else y


def _norm(shape: ModelShape, state: State, x: np.ndarray, prefix: str, layer: int | None,
          kind: str | None = None) -> np.ndarray:
    """RMSNorm ``x * g / sqrt(mean(x^2) + eps)`` or LayerNorm (biased variance) over the last axis
    (``kind``: the model's norm unless given)."""
    gain = state[(f"{prefix}.weight", layer)] + shape.norm_offset
    if (kind or shape.norm) == "layernorm":
        centered = x - x.mean(-1, keepdims=True)  # (..., h)
        var = (centered ** 2).mean(-1, keepdims=True)  # (..., 1)
        return centered / np.sqrt(var + shape.norm_eps) * gain + state[(f"{prefix}.bias", layer)]
    return x / np.sqrt((x ** 2).mean(-1, keepdims=True) + shape.norm_eps) * gain


def _activate(activation: str, up: np.ndarray, gate: np.ndarray | None) -> np.ndarray:
    """The MLP's hidden units: ``act(up)``, or ``act(gate) * up`` for a gated MLP."""
    if activation in GATED:
        return _activate(GATED[activation], gate, None) * up
    if activation == "relu":
        return np.maximum(up, 0.0)
    if activation == "silu":
        return _silu(up)
    if activation == "gelu":
        return 0.5 * up * (1 + _erf(up / math.sqrt(2)))
    if activation == "gelu_tanh":
        return 0.5 * up * (1 + np.tanh(math.sqrt(2 / math.pi) * (up + 0.044715 * up ** 3)))
    raise ValueError(f"unknown activation {activation!r}")


def _silu(x: np.ndarray) -> np.ndarray:
    """x * sigmoid(x), without overflow: exp of a non-positive number only."""
    e = np.exp(-np.abs(x))
    return x * np.where(x >= 0, 1 / (1 + e), e / (1 + e))


_ERF = np.frompyfunc(math.erf, 1, 1)


def _erf(x: np.ndarray) -> np.ndarray:
    """The exact error function, elementwise (numpy has none)."""
    return _ERF(x).astype(np.float64)


def _attention(shape: ModelShape, state: State, layer: int, x: np.ndarray) -> np.ndarray:
    """Causal GQA attention sublayer: (B, T, h) -> (B, T, h)."""
    s = shape.layers[layer]
    B, T, _ = x.shape

    def heads(prefix: str, count: int, width: int) -> np.ndarray:
        y = _linear(shape, state, x, prefix, layer)
        if shape.qk_norm == "all" and prefix != "attn.v":  # over all heads at once, before the split
            y = _norm(shape, state, y, f"{prefix}_norm_all", layer, "rmsnorm")
        y = y.reshape(B, T, count, width).transpose(0, 2, 1, 3)
        if shape.qk_norm == "head" and prefix != "attn.v":  # each head over its key width
            y = _norm(shape, state, y, f"{prefix}_norm", layer, "rmsnorm")
        return y

    q = heads("attn.q", s.heads, s.key)  # (B, H, T, k)
    k = heads("attn.k", s.kv_heads, s.key)  # (B, G, T, k)
    v = heads("attn.v", s.kv_heads, s.value)  # (B, G, T, v)
    if shape.position == "rope":
        q, k = _rope(q, shape, s), _rope(k, shape, s)
    group = s.heads // s.kv_heads  # query head j reads kv head j // group
    k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)  # (B, H, T, k), (B, H, T, v)
    scale = (shape.attn_scale if shape.attn_scale is not None else s.key) ** -0.5
    scores = _softcap(q @ k.swapaxes(-1, -2) * scale, shape.attn_softcap)  # (B, H, T, T)
    scores = np.where(np.tri(T, dtype=bool), scores, -np.inf)
    weights = np.exp(scores - scores.max(-1, keepdims=True))
    weights = weights / weights.sum(-1, keepdims=True)  # (B, H, T, T)
    out = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, s.heads * s.value)  # (B, T, H*v)
    return _linear(shape, state, out, "attn.o", layer)


def _rope(x: np.ndarray, shape: ModelShape, layer) -> np.ndarray:
    """Rotate ``x`` (B, heads, T, key) by position, ``rotate_half`` pairing (dim i with i + key/2),
    with the model's rope scaling (`specgrow.rope`)."""
    if shape.rotary_dims is not None and shape.rotary_dims < x.shape[-1]:  # partial rotary: the first dims
        turned = _rope(x[..., :shape.rotary_dims], replace(shape, rotary_dims=None), layer)
        return np.concatenate([turned, x[..., shape.rotary_dims:]], axis=-1)
    seq, width = x.shape[-2], x.shape[-1]
    theta, scaling = shape.rope_of(layer)
    cos, sin = angles(width, theta, scaling, shape.positions, seq)  # (T, key)
    half = width // 2
    rotated = np.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    return x * cos + rotated * sin


# ---------------------------------------------------------------- the search
def find_witness(steps, before: ModelShape, seed: int, zeros=frozenset(),
                 tokens_seed: int | None = None, tied=frozenset()) -> Counterexample | None:
    """A random float64 model of shape ``before`` whose logits move when grown by ``steps`` alone.

    ``steps`` are `StepPlan`s applied in order (one step, or one stage's steps); ``zeros``
    are the (role, layer) tensors earlier steps left exactly zero, zeroed before growing;
    ``tied`` the routers whose logits earlier steps tied for every token
    (`specgrow.verify.experts.ties_after`), each given one row (its first) for all experts.
    Tried in turn: biases x1 then x10; norm gains x1, x4, x16; model seeds ``seed`` to
    ``seed + 2``. Tokens come from ``tokens_seed`` (the model seed when None). The first
    model that moves is returned; None when none does.
    """
    steps = [_concrete(step) for step in steps]
    after = steps[-1].after if steps else before
    for bias in BIASES:
        for gain in GAINS:
            for trial in range(seed, seed + SEEDS):
                state = random_state(before, trial, gain, bias)
                state.update({key: np.zeros_like(state[key]) for key in zeros if key in state})
                state.update({key: np.repeat(state[key][:1], len(state[key]), axis=0) for key in tied if key in state})
                tokens = random_tokens(before, trial if tokens_seed is None else tokens_seed)
                with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN is a finding here
                    reference = logits(before, state, tokens)
                    for step in steps:
                        state = grow(state, step)
                    grown = logits(after, state, tokens)
                found = _differs(before, reference, grown, tokens,
                                 seed=trial, norm_gain=gain, bias_scale=bias)
                if found is not None:
                    return found
    return None


def random_tokens(shape: ModelShape, seed: int) -> np.ndarray:
    """`BATCH` seeded sequences of up to `LENGTH` tokens: (B, T) ints."""
    length = min(shape.positions, LENGTH)
    return np.random.default_rng(seed).integers(0, shape.vocab, (BATCH, length))


def _differs(shape: ModelShape, reference: np.ndarray, grown: np.ndarray, tokens: np.ndarray,
             **trial) -> Counterexample | None:
    """The witness when the logits (B, T, vocab) differ beyond the bound (or are not finite), else None.

    It reports the tokens up to the position of the largest difference and the first logits
    of that last position, for both models; ``trial`` holds the seed and scales of the model.
    A model whose own logits are not finite (zeroed tensors under eps 0) witnesses nothing.
    """
    if not np.isfinite(reference).all():
        return None
    diff = np.abs(grown - reference)  # (B, T, vocab)
    bound = RELATIVE * max(1.0, float(np.abs(reference).max()))
    finite = bool(np.isfinite(grown).all())
    if finite and float(diff.max()) <= bound:
        return None
    worst = np.nan_to_num(diff, nan=np.inf)
    b, t, _ = np.unravel_index(int(np.argmax(worst)), diff.shape)
    dims = shape.to_config()
    return Counterexample(
        dims={key: dims[key] for key in ("hidden", "vocab", "positions", "layers")},
        tokens=tokens[b, :t + 1].tolist(),
        reference=[float(v) for v in reference[b, t, :SHOWN]],
        grown=[float(v) for v in grown[b, t, :SHOWN]],
        max_abs_diff=float(worst.max()),
        tolerance=f"float64, {RELATIVE:g} * max(1, max|logit|) = {bound:.3g}",
        relative_bound=RELATIVE, dtype="float64", **trial,
    )
