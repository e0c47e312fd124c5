"""The reference Transformer: the semantics specgrow proves and the model it grows by default.

Decoder: ``x = embed(t) [+ pos(t)]``; each layer ``x += attn(norm(x))``,
``x += mlp(norm(x))`` (``norm_position: pre``), ``x += norm(f(x))`` (``post``) or
``x += norm(f(norm(x)))`` (``sandwich``), or ``x += attn(norm(x)) + mlp(norm'(x))``
(``parallel_residual``); optional final norm; logits ``x @ unembed.T`` (or
the embedding, tied). RMSNorm ``x * g / sqrt(mean(x^2) + eps)`` or LayerNorm; relu/gelu/silu
MLP ``down(act(up(x)))`` or SwiGLU ``down(silu(gate(x)) * up(x))``; causal attention with
GQA (query head ``j`` reads kv head ``j // (heads/kv_heads)``), scale ``1/sqrt(key)``,
optional QK-norm (RMSNorm with the model's eps, per head over the key width or over all
heads at once, before RoPE), optional RoPE in the ``rotate_half`` convention (dim ``i``
pairs with ``i + key/2``, ``inv_freq_i = theta^(-2i/key)``, rescaled by the rope scaling of
`specgrow.rope`). Widths may differ per layer.

>>> import torch
>>> from specgrow.shape import ModelShape, LayerShape
>>> shape = ModelShape(hidden=8, vocab=11, positions=4, layers=(LayerShape(16, 2, 1, 4, 4),))
>>> model = ReferenceModel(shape)
>>> _ = model.load_state_dict(random_state(shape, seed=0))
>>> model(torch.zeros(1, 3, dtype=torch.long)).shape
torch.Size([1, 3, 11])
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from specgrow import rope as frequencies
from specgrow.shape import GATED, NORM_GAINS, QK_NORM_GAINS, LayerShape, ModelShape, tensor_name

ACTIVATIONS = {
    "relu": F.relu, "gelu": F.gelu, "silu": F.silu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),  # GPT-2's gelu_new
}


class Norm(nn.Module):
    def __init__(self, width: int, kind: str, eps: float, offset: float = 0.0):
        super().__init__()
        self.kind, self.eps, self.offset = kind, eps, offset
        self.weight = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.zeros(width)) if kind == "layernorm" else None

    def forward(self, x):
        return normalize(x, self.kind, self.eps, self.weight, self.bias, self.offset)


def normalize(x, kind: str, eps: float, weight, bias=None, offset: float = 0.0):
    """RMSNorm or LayerNorm of the last axis, times ``offset + weight`` (1 + w: Gemma)."""
    gain = weight + offset if offset else weight
    if kind == "layernorm":
        return F.layer_norm(x, x.shape[-1:], gain, bias, eps)
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain


def softcap(x, cap: float | None):
    """``cap * tanh(x / cap)``; x itself when ``cap`` is None."""
    return x if cap is None else cap * torch.tanh(x / cap)


def rope(x, theta: float, scaling: tuple = (), positions: int = 0, rotary: int | None = None):
    """Rotate ``x`` (B, heads, T, key) by position, ``rotate_half`` pairing; ``scaling`` and
    ``positions`` (max_position_embeddings) as `specgrow.rope.frequencies` reads them; with
    ``rotary`` (partial rotary) only the first ``rotary`` dims, at the frequencies of that width."""
    if rotary is not None and rotary < x.shape[-1]:
        return torch.cat([rope(x[..., :rotary], theta, scaling, positions), x[..., rotary:]], dim=-1)
    seq, width = x.shape[-2], x.shape[-1]
    cos, sin = frequencies.angles(width, theta, scaling, positions, seq)  # (T, key) float64
    cos, sin = torch.from_numpy(cos).to(x.device, x.dtype), torch.from_numpy(sin).to(x.device, x.dtype)
    half = width // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Attention(nn.Module):
    def __init__(self, shape: ModelShape, s: LayerShape):
        super().__init__()
        hidden, bias = shape.hidden, shape.bias
        self.s, self.shape = s, shape
        self.q = nn.Linear(hidden, s.heads * s.key, bias="q" in bias)
        self.k = nn.Linear(hidden, s.kv_heads * s.key, bias="k" in bias)
        self.v = nn.Linear(hidden, s.kv_heads * s.value, bias="v" in bias)
        self.o = nn.Linear(s.heads * s.value, hidden, bias="o" in bias)
        widths = {"head": (s.key, s.key), "all": (s.heads * s.key, s.kv_heads * s.key)}.get(shape.qk_norm, ())
        # named as their roles: attn.q_norm / attn.k_norm (head), attn.q_norm_all / attn.k_norm_all (all)
        self.qk_norms = tuple(role.split(".")[1] for role in QK_NORM_GAINS.get(shape.qk_norm, ()))
        for name, width in zip(self.qk_norms, widths):
            setattr(self, name, Norm(width, "rmsnorm", shape.norm_eps, shape.norm_offset))

    def forward(self, x):
        gains = [getattr(self, name).weight for name in self.qk_norms] or [None, None]
        return self.o(attend(self.q(x), self.k(x), self.v(x), self.s, self.shape, *gains))


def attend(q, k, v, s: LayerShape, shape: ModelShape, q_gain=None, k_gain=None):
    """Causal multi-head attention of projected ``q`` (B, T, H*k), ``k`` (B, T, G*k), ``v`` (B, T, G*v),
    with the model's QK-norm (its gains ``q_gain``, ``k_gain``) and RoPE."""
    B, T, _ = q.shape
    eps, offset = shape.norm_eps, shape.norm_offset
    if shape.qk_norm == "all":  # OLMo 2: over all heads at once, before the split
        q, k = normalize(q, "rmsnorm", eps, q_gain, None, offset), normalize(k, "rmsnorm", eps, k_gain, None, offset)
    q = q.view(B, T, s.heads, s.key).transpose(1, 2)  # (B, H, T, k)
    k = k.view(B, T, s.kv_heads, s.key).transpose(1, 2)  # (B, G, T, k)
    v = v.view(B, T, s.kv_heads, s.value).transpose(1, 2)  # (B, G, T, v)
    if shape.qk_norm == "head":  # Qwen3, Gemma 3: each head over its key width
        q, k = normalize(q, "rmsnorm", eps, q_gain, None, offset), normalize(k, "rmsnorm", eps, k_gain, None, offset)
    if shape.position == "rope":
        theta, scaling = shape.rope_of(s)
        q = rope(q, theta, scaling, shape.positions, shape.rotary_dims)
        k = rope(k, theta, scaling, shape.positions, shape.rotary_dims)
    group = s.heads // s.kv_heads
    k = k.repeat_interleave(group, dim=1)  # (B, H, T, k)
    v = v.repeat_interleave(group, dim=1)  # (B, H, T, v)
    scale = (shape.attn_scale if shape.attn_scale is not None else s.key) ** -0.5
    scores = softcap(q @ k.transpose(-1, -2) * scale, shape.attn_softcap)  # (B, H, T, T)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    out = scores.softmax(-1) @ v  # (B, H, T, v)
    return out.transpose(1, 2).reshape(B, T, s.heads * s.value)


class MLP(nn.Module):
    def __init__(self, hidden: int, width: int, activation: str, bias: tuple[str, ...]):
        super().__init__()
        self.activation = activation
        self.up = nn.Linear(hidden, width, bias="up" in bias)
        self.gate = nn.Linear(hidden, width, bias="gate" in bias) if activation in GATED else None
        self.down = nn.Linear(width, hidden, bias="down" in bias)

    def forward(self, x):
        gate = self.gate(x) if self.gate is not None else None
        return self.down(activate(self.activation, self.up(x), gate))


class _Packed(nn.Module):
    """One packed expert tensor: ``weight`` of shape (experts, out, in)."""

    def __init__(self, *shape: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(*shape))


class MoE(nn.Module):
    """A mixture of experts: a bias-free router, softmax over all experts, the top_k of them per
    token (their weights renormalised to sum 1 with ``renormalize``), each a bias-free MLP."""

    def __init__(self, hidden: int, s: LayerShape, activation: str, renormalize: bool):
        super().__init__()
        self.activation, self.top_k, self.renormalize = activation, s.top_k, renormalize
        self.router = nn.Linear(hidden, s.experts, bias=False)
        self.experts = nn.Module()
        self.experts.up = _Packed(s.experts, s.mlp, hidden)
        self.experts.gate = _Packed(s.experts, s.mlp, hidden) if activation in GATED else None
        self.experts.down = _Packed(s.experts, hidden, s.mlp)

    def forward(self, x):
        e = self.experts

        def expert(i, xs):
            return run_expert(self.activation, xs, e.up.weight[i], None if e.gate is None else e.gate.weight[i],
                              e.down.weight[i])

        return mixture(x, self.router(x), self.top_k, self.renormalize, expert)


def run_expert(activation: str, xs, up, gate, down):
    """One expert on its tokens ``xs`` (n, h): ``down(act(gate xs) * up xs)`` (no gate: ``down(act(up xs))``)."""
    return activate(activation, xs @ up.T, None if gate is None else xs @ gate.T) @ down.T


def route(logits, top_k: int, renormalize: bool):
    """(weights, experts) of each token, (..., top_k) each: softmax over every expert's logit in float32
    (or wider), the top_k probabilities, rescaled to sum 1 with ``renormalize`` (as transformers' Mixtral
    and Qwen3-MoE do); weights in the logits' dtype."""
    probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(-1)
    weights, experts = probs.topk(top_k, dim=-1)
    if renormalize:
        weights = weights / weights.sum(-1, keepdim=True)
    return weights.to(logits.dtype), experts


def mixture(x, logits, top_k: int, renormalize: bool, expert):
    """Each token's sum of ``expert(i, tokens)`` over its routed experts, times their weights; each expert
    runs only on the tokens routed to it (``expert(i, xs)`` maps (n, h) to (n, h))."""
    weights, chosen = route(logits, top_k, renormalize)
    flat, w, c = x.reshape(-1, x.shape[-1]), weights.reshape(-1, top_k), chosen.reshape(-1, top_k)
    out = torch.zeros_like(flat)
    for i in torch.unique(c).tolist():
        token, slot = (c == i).nonzero(as_tuple=True)
        out.index_add_(0, token, expert(i, flat[token]) * w[token, slot, None])
    return out.reshape(x.shape)


def activate(activation: str, up, gate=None):
    """The MLP's hidden units: ``act(up)``, or ``act(gate) * up`` for a gated MLP (swiglu: silu,
    geglu_tanh: gelu_tanh)."""
    if activation in GATED:
        return ACTIVATIONS[GATED[activation]](gate) * up
    return ACTIVATIONS[activation](up)


class Layer(nn.Module):
    def __init__(self, shape: ModelShape, s: LayerShape):
        super().__init__()
        h = shape.hidden
        pre, post = shape.norm_position in ("pre", "sandwich"), shape.norm_position in ("post", "sandwich")
        norm = lambda on: Norm(h, shape.norm, shape.norm_eps, shape.norm_offset) if on else None  # noqa: E731
        self.attn_norm, self.attn_post_norm = norm(pre), norm(post)
        self.attn = Attention(shape, s)
        self.mlp_norm, self.mlp_post_norm = norm(pre), norm(post)
        self.mlp = MoE(h, s, shape.activation, shape.renormalize) if s.experts else \
            MLP(h, s.mlp, shape.activation, shape.bias)
        self.parallel = shape.parallel_residual

    def forward(self, x):
        attn = sublayer(self.attn, x, self.attn_norm, self.attn_post_norm)
        if self.parallel:  # GPT-NeoX: both sublayers read the layer's input
            return x + attn + sublayer(self.mlp, x, self.mlp_norm, self.mlp_post_norm)
        x = x + attn
        return x + sublayer(self.mlp, x, self.mlp_norm, self.mlp_post_norm)


def sublayer(f, x, pre=None, post=None):
    """What a sublayer adds to the residual stream: ``post(f(pre(x)))``, a missing norm skipped."""
    y = f(pre(x) if pre is not None else x)
    return post(y) if post is not None else y


class ReferenceModel(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab, shape.hidden)
        self.pos = nn.Embedding(shape.positions, shape.hidden) if shape.position == "learned" else None
        self.layers = nn.ModuleList(Layer(shape, s) for s in shape.layers)
        self.final_norm = Norm(shape.hidden, shape.norm, shape.norm_eps, shape.norm_offset) if shape.final_norm else None
        self.unembed = None if shape.tie_embeddings else nn.Linear(shape.hidden, shape.vocab, bias=False)

    def forward(self, tokens):
        x = self.embed(tokens)  # (B, T, h)
        if self.shape.embed_scale:
            x = x * torch.tensor(self.shape.hidden ** 0.5, dtype=x.dtype)
        if self.pos is not None:
            x = x + self.pos(torch.arange(tokens.shape[1], device=tokens.device))
        for layer in self.layers:
            x = layer(x)
        if self.final_norm is not None:
            x = self.final_norm(x)
        weight = self.embed.weight if self.unembed is None else self.unembed.weight
        return softcap(x @ weight.T, self.shape.logit_softcap)  # (B, T, vocab)


def random_state(shape: ModelShape, seed: int, dtype=torch.float32) -> dict[str, torch.Tensor]:
    """A seeded random state dict, deterministic on every device (drawn on the CPU).

    Matrices ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norm gains ~ 1 + N(0, 0.1^2) and
    biases ~ N(0, 0.1^2): nonzero gains and biases make preservation tests meaningful.
    """
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for (role, layer), dims in shape.tensor_shapes().items():
        noise = torch.randn(dims, generator=gen, dtype=torch.float32)
        if role in NORM_GAINS:
            value = 1 + 0.1 * noise - shape.norm_offset  # stored: the gain is norm_offset + value
        elif role.endswith(".bias"):
            value = 0.1 * noise
        elif role in ("embed.weight", "pos.weight"):
            value = noise
        else:
            value = noise / math.sqrt(dims[-1])
        state[tensor_name(role, layer)] = value.to(dtype)
    return state


def build(shape: ModelShape, state: dict[str, torch.Tensor], device="cpu") -> ReferenceModel:
    """A reference model of ``shape`` holding ``state`` (strict: names and shapes must match)."""
    with torch.device("meta"):
        model = ReferenceModel(shape)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device).eval()
