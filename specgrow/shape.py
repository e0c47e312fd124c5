"""The concrete shape of a model as it moves through the steps (plain data, no torch).

A `ModelShape` allows per-layer widths, because growing a subset of layers leaves
layers of different shapes. Tensor roles are named in the torch layout ``[out, in]``
and carry the *space* of each axis (mergekit's vocabulary): what grows together.

>>> from specgrow.shape import ModelShape, LayerShape
>>> s = ModelShape(hidden=8, vocab=16, positions=4, layers=(LayerShape(32, 2, 2, 4, 4),))
>>> s.tensor_shapes()[("attn.q.weight", 0)]
(8, 8)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

# role -> the space of each axis. Spaces: residual (h), vocab, positions, mlp (p),
# q (heads x key), k (kv heads x key), v (kv heads x value), o (heads x value), head (key: one
# head's query/key width, shared by every head).
GLOBAL_ROLES: dict[str, tuple[str, ...]] = {
    "embed.weight": ("vocab", "residual"),
    "pos.weight": ("positions", "residual"),
    "final_norm.weight": ("residual",),
    "final_norm.bias": ("residual",),
    "unembed.weight": ("vocab", "residual"),
}
LAYER_ROLES: dict[str, tuple[str, ...]] = {
    "attn_norm.weight": ("residual",),
    "attn_norm.bias": ("residual",),
    "attn.q.weight": ("q", "residual"),
    "attn.q.bias": ("q",),
    "attn.k.weight": ("k", "residual"),
    "attn.k.bias": ("k",),
    "attn.v.weight": ("v", "residual"),
    "attn.v.bias": ("v",),
    "attn.o.weight": ("residual", "o"),
    "attn.o.bias": ("residual",),
    "attn.q_norm.weight": ("head",),
    "attn.k_norm.weight": ("head",),
    "attn.q_norm_all.weight": ("q",),
    "attn.k_norm_all.weight": ("k",),
    "attn_post_norm.weight": ("residual",),
    "attn_post_norm.bias": ("residual",),
    "mlp_norm.weight": ("residual",),
    "mlp_norm.bias": ("residual",),
    "mlp.up.weight": ("mlp", "residual"),
    "mlp.up.bias": ("mlp",),
    "mlp.gate.weight": ("mlp", "residual"),
    "mlp.gate.bias": ("mlp",),
    "mlp.down.weight": ("residual", "mlp"),
    "mlp.down.bias": ("residual",),
    "mlp_post_norm.weight": ("residual",),
    "mlp_post_norm.bias": ("residual",),
    # mixture-of-experts layers (`LayerShape.experts` > 0) in place of up/gate/down: the router's logits and
    # every expert's projections packed along a leading experts axis (the expert's width is the layer's mlp)
    "mlp.router.weight": ("experts", "residual"),
    "mlp.experts.up.weight": ("experts", "mlp", "residual"),
    "mlp.experts.gate.weight": ("experts", "mlp", "residual"),
    "mlp.experts.down.weight": ("experts", "residual", "mlp"),
}
EXPERT_ROLES = ("mlp.router.weight", "mlp.experts.up.weight", "mlp.experts.gate.weight", "mlp.experts.down.weight")
DENSE_MLP_ROLES = ("mlp.up.weight", "mlp.up.bias", "mlp.gate.weight", "mlp.gate.bias", "mlp.down.weight",
                   "mlp.down.bias")
# QK-norm gains (RMSNorm, the model's one eps): per head over the key width (`qk_norm: head`,
# Qwen3, Gemma 3), or over all heads' queries / keys at once (`qk_norm: all`, OLMo 2).
QK_NORM_GAINS = {"head": ("attn.q_norm.weight", "attn.k_norm.weight"),
                 "all": ("attn.q_norm_all.weight", "attn.k_norm_all.weight")}
PRE_NORMS = ("attn_norm", "mlp_norm")  # before each sublayer: `norm_position` pre or sandwich
POST_NORMS = ("attn_post_norm", "mlp_post_norm")  # on each sublayer's output: post or sandwich
NORM_GAINS = ("attn_norm.weight", "mlp_norm.weight", "final_norm.weight", "attn_post_norm.weight",
              "mlp_post_norm.weight", *QK_NORM_GAINS["head"], *QK_NORM_GAINS["all"])
NORM_BIASES = ("attn_norm.bias", "mlp_norm.bias", "final_norm.bias", "attn_post_norm.bias", "mlp_post_norm.bias")

GATED = {"swiglu": "silu", "geglu_tanh": "gelu_tanh"}  # gated MLPs: down(act(gate(x)) * up(x)), by activation

TensorKey = tuple[str, "int | None"]  # (role, layer); layer None for global tensors


@dataclass(frozen=True)
class LayerShape:
    mlp: int
    heads: int
    kv_heads: int
    key: int
    value: int
    attention: str = "full_attention"  # or "sliding_attention": RoPE with the model's rope_local_theta
    experts: int = 0  # a mixture of experts (mlp: each expert's width) routed to top_k of them; 0: a dense MLP
    top_k: int = 0


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    vocab: int
    positions: int
    layers: tuple[LayerShape, ...]
    norm: str = "rmsnorm"
    norm_eps: float = 1e-6
    activation: str = "gelu"
    position: str = "learned"
    rope_theta: float = 10000.0
    final_norm: bool = True
    tie_embeddings: bool = False
    bias: tuple[str, ...] = ()  # projections with a bias: q k v o up gate down
    arch: str = field(default="reference")
    qk_norm: str = "none"  # none | head | all
    norm_position: str = "pre"  # pre | post | sandwich
    rope_scaling: tuple = ()  # (key, value) pairs of the rope scaling, sorted by key; () none
    norm_offset: float = 0.0  # every norm multiplies by (norm_offset + stored gain): 1 for Gemma's (1+w)
    embed_scale: bool = False  # embeddings times sqrt(hidden) (Gemma)
    attn_softcap: float | None = None  # scores -> cap * tanh(scores / cap) before the softmax
    logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap)
    attn_scale: float | None = None  # scores times attn_scale^-1/2 (Gemma's query_pre_attn_scalar) for 1/sqrt(key)
    rope_local_theta: float | None = None  # RoPE base of sliding-attention layers (unscaled); None: rope_theta
    rotary_dims: int | None = None  # partial rotary: the first rotary_dims columns of each head turn; None: all
    parallel_residual: bool = False  # x + attn(norm(x)) + mlp(norm'(x)) (GPT-NeoX)
    renormalize: bool = False  # MoE routing: softmax, top-k, then the k weights rescaled to sum 1 (norm_topk_prob)

    @classmethod
    def from_spec(cls, model) -> ModelShape:
        """The starting shape of a `specgrow.spec.ModelSpec`."""
        d = model.dims
        kinds = model.layer_types or ("full_attention",) * d.layers
        layers = tuple(LayerShape(d.mlp, d.heads, d.kv_heads, d.key, d.value, kind) for kind in kinds)
        if model.experts:
            layers = tuple(layer if i in model.dense_layers else
                           replace(layer, mlp=model.expert_mlp, experts=model.experts, top_k=model.top_k)
                           for i, layer in enumerate(layers))
        return cls(
            hidden=d.hidden, vocab=d.vocab, positions=d.positions, layers=layers,
            norm=model.norm, norm_eps=model.norm_eps, activation=model.activation,
            position=model.position, rope_theta=model.rope_theta, final_norm=model.final_norm,
            tie_embeddings=model.tie_embeddings, bias=model.bias, arch=model.arch,
            qk_norm=model.qk_norm, norm_position=model.norm_position, rope_scaling=model.rope_scaling,
            norm_offset=model.norm_offset, embed_scale=model.embed_scale, attn_softcap=model.attn_softcap,
            logit_softcap=model.logit_softcap, attn_scale=model.attn_scale,
            rope_local_theta=model.rope_local_theta, rotary_dims=model.rotary_dims,
            parallel_residual=model.parallel_residual, renormalize=model.renormalize,
        )

    def rope_of(self, layer: LayerShape) -> tuple[float, tuple]:
        """The RoPE base and scaling of a layer: sliding-attention layers take ``rope_local_theta``
        unscaled when the model has one (Gemma 3), every other layer ``rope_theta`` and the scaling."""
        if layer.attention == "sliding_attention" and self.rope_local_theta is not None:
            return self.rope_local_theta, ()
        return self.rope_theta, self.rope_scaling

    def with_layers(self, layers) -> ModelShape:
        return replace(self, layers=tuple(layers))

    # ------------------------------------------------------------ tensors
    def has_role(self, role: str, layer: int | None = None) -> bool:
        """Whether this model has a tensor of this role: in layer ``layer``, or in any layer when None."""
        if role in EXPERT_ROLES or role in DENSE_MLP_ROLES:
            moe = [s.experts > 0 for s in (self.layers if layer is None else (self.layers[layer],))]
            if not (any(moe) if role in EXPERT_ROLES else not all(moe)):
                return False
            if role == "mlp.experts.gate.weight":
                return self.activation in GATED
        if role.endswith(".bias") and not role.endswith("norm.bias"):
            if role.split(".")[1] not in self.bias:
                return False
        if role in NORM_BIASES and self.norm != "layernorm":
            return False
        if role.startswith(PRE_NORMS):
            return self.norm_position in ("pre", "sandwich")
        if role.startswith(POST_NORMS):
            return self.norm_position in ("post", "sandwich")
        if role in QK_NORM_GAINS["head"] or role in QK_NORM_GAINS["all"]:
            return role in QK_NORM_GAINS.get(self.qk_norm, ())
        if role == "pos.weight":
            return self.position == "learned"
        if role == "final_norm.weight" or role == "final_norm.bias":
            return self.final_norm
        if role == "unembed.weight":
            return not self.tie_embeddings
        if role.startswith("mlp.gate."):
            return self.activation in GATED
        return True

    def axis_sizes(self, layer: int | None) -> dict[str, int]:
        sizes = {"residual": self.hidden, "vocab": self.vocab, "positions": self.positions}
        if layer is not None:
            s = self.layers[layer]
            sizes.update(
                mlp=s.mlp, head=s.key, q=s.heads * s.key, k=s.kv_heads * s.key,
                v=s.kv_heads * s.value, o=s.heads * s.value, experts=s.experts,
            )
        return sizes

    def role_shape(self, role: str, layer: int | None) -> tuple[int, ...]:
        spaces = GLOBAL_ROLES[role] if layer is None else LAYER_ROLES[role]
        sizes = self.axis_sizes(layer)
        return tuple(sizes[s] for s in spaces)

    def tensor_keys(self) -> list[TensorKey]:
        keys: list[TensorKey] = [(r, None) for r in GLOBAL_ROLES if self.has_role(r)]
        for i in range(len(self.layers)):
            keys += [(r, i) for r in LAYER_ROLES if self.has_role(r, i)]
        return keys

    def tensor_shapes(self) -> dict[TensorKey, tuple[int, ...]]:
        return {(r, i): self.role_shape(r, i) for r, i in self.tensor_keys()}

    def parameter_count(self) -> int:
        total = 0
        for shape in self.tensor_shapes().values():
            n = 1
            for s in shape:
                n *= s
            total += n
        return total

    # ------------------------------------------------------------ config
    def to_config(self) -> dict:
        """A JSON-ready description, read back by `from_config`."""
        return {
            "specgrow_config": 1,
            "arch": self.arch,
            "hidden": self.hidden,
            "vocab": self.vocab,
            "positions": self.positions,
            "norm": self.norm,
            "norm_eps": self.norm_eps,
            "activation": self.activation,
            "position": self.position,
            "rope_theta": self.rope_theta,
            "final_norm": self.final_norm,
            "tie_embeddings": self.tie_embeddings,
            "bias": list(self.bias),
            "qk_norm": self.qk_norm,
            "norm_position": self.norm_position,
            "rope_scaling": dict(self.rope_scaling) or None,
            "norm_offset": self.norm_offset,
            "embed_scale": self.embed_scale,
            "attn_softcap": self.attn_softcap,
            "logit_softcap": self.logit_softcap,
            "attn_scale": self.attn_scale,
            "rope_local_theta": self.rope_local_theta,
            "rotary_dims": self.rotary_dims,
            "parallel_residual": self.parallel_residual,
            "renormalize": self.renormalize,
            "layers": [
                {"mlp": s.mlp, "heads": s.heads, "kv_heads": s.kv_heads, "key": s.key, "value": s.value,
                 **({"attention": s.attention} if s.attention != "full_attention" else {}),
                 **({"experts": s.experts, "top_k": s.top_k} if s.experts else {})}
                for s in self.layers
            ],
        }

    @classmethod
    def from_config(cls, cfg: dict) -> ModelShape:
        cfg = dict(cfg)
        cfg.pop("specgrow_config", None)
        layers = tuple(LayerShape(**layer) for layer in cfg.pop("layers"))
        scaling = tuple(sorted((cfg.pop("rope_scaling", None) or {}).items()))
        return cls(layers=layers, bias=tuple(cfg.pop("bias", ())), rope_scaling=scaling, **cfg)


def tensor_name(role: str, layer: int | None) -> str:
    """The reference model's state-dict name of a tensor."""
    return role if layer is None else f"layers.{layer}.{role}"
