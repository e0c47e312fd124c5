"""Checkpoint families as data: which stored tensor holds which roles, in which layout.

A role is a tensor of the reference model in the torch layout ``[out, in]``
(`specgrow.shape.GLOBAL_ROLES`, `LAYER_ROLES`). A `Stored` tensor is what a checkpoint
file holds: one role, or several concatenated along the role's output axis (GPT-2's fused
``c_attn`` = q | k | v), possibly transposed (GPT-2's Conv1D keeps ``[in, out]``).

>>> family = FAMILIES["gpt2"]
>>> [s.template for s in family.layer if "attn.q.weight" in s.roles]
['h.{}.attn.c_attn.weight']
>>> FAMILIES["llama"].name_of(FAMILIES["llama"].layer[1], 3, "model.")
'model.layers.3.self_attn.q_proj.weight'
>>> FAMILIES["olmo2"].display_name("attn.k_norm_all.weight", 1)
'model.layers.1.self_attn.k_norm.weight'
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from specgrow.shape import GLOBAL_ROLES, LAYER_ROLES, ModelShape


@dataclass(frozen=True)
class Stored:
    """A stored tensor: ``roles`` concatenated along the role's axis 0, transposed if Conv1D."""

    template: str  # "{}" stands for the layer index
    roles: tuple[str, ...]
    transposed: bool = False
    prefixed: bool = True  # False for names outside the model prefix (lm_head)


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    globals: tuple[Stored, ...]
    layer: tuple[Stored, ...]
    prefixes: tuple[str, ...]  # the model prefix, tried in order ("" = none)
    ignored: str  # regex of stored buffers that are not weights (dropped, recomputed on load)
    # model fields every checkpoint of the family has, with their value (`PLAIN` by default):
    # a spec whose model says otherwise describes another family
    features: tuple[tuple[str, object], ...] = ()

    def name_of(self, stored: Stored, layer: int | None, prefix: str) -> str:
        name = stored.template.format(layer) if layer is not None else stored.template
        return prefix + name if stored.prefixed else name

    def stored_tensors(self, shape: ModelShape, prefix: str) -> list[tuple[str, Stored, int | None]]:
        """``(name, stored, layer)`` of every tensor a checkpoint of ``shape`` holds, in model order."""
        out = [(self.name_of(s, None, prefix), s, None) for s in self.globals if _has(shape, s)]
        for i in range(len(shape.layers)):
            out += [(self.name_of(s, i, prefix), s, i) for s in self.layer if _has(shape, s)]
        return out

    def is_ignored(self, name: str) -> bool:
        return re.search(self.ignored, name) is not None

    def stored_of(self, role: str, layer: int | None) -> Stored:
        """The stored tensor that holds ``role``."""
        for stored in self.globals if layer is None else self.layer:
            if role in stored.roles:
                return stored
        raise KeyError(role)

    def display_name(self, role: str, layer: int | None) -> str:
        """The stored name of a role, ``[q]`` marking its part of a fused tensor, ``.T`` a Conv1D layout.

        A role the family never stores (a spec whose features are not the family's, e.g. a QK-norm
        under ``arch: llama``) is shown by its role name, said so.

        >>> GPT2.display_name("attn.k.weight", 0)
        'transformer.h.0.attn.c_attn.weight[k].T'
        >>> LLAMA.display_name("attn.q_norm.weight", 1)
        'layers.1.attn.q_norm.weight (no llama tensor holds it)'
        """
        try:
            stored = self.stored_of(role, layer)
        except KeyError:
            return ("" if layer is None else f"layers.{layer}.") + f"{role} (no {self.name} tensor holds it)"
        name = self.name_of(stored, layer, self.prefixes[0])
        part = f"[{role.split('.')[1]}]" if len(stored.roles) > 1 else ""
        return name + part + (".T" if stored.transposed else "")

    def prefix_of(self, names) -> str:
        """The model prefix these stored names use (by the token embedding's name)."""
        names = set(names)
        for prefix in self.prefixes:
            if self.name_of(self.globals[0], None, prefix) in names:
                return prefix
        return self.prefixes[0]


def stored_shape(stored: Stored, shape: ModelShape, layer: int | None) -> tuple[int, ...]:
    """The stored tensor's shape: its roles' shapes stacked on axis 0, reversed if Conv1D."""
    parts = [shape.role_shape(role, layer) for role in stored.roles]
    out = (sum(p[0] for p in parts),) + parts[0][1:]
    return out[::-1] if stored.transposed else out


def _has(shape: ModelShape, stored: Stored) -> bool:
    present = [shape.has_role(role) for role in stored.roles]
    if any(present) and not all(present):  # e.g. GPT-2's c_attn.bias without a k bias
        raise ValueError(f"{stored.template} holds {stored.roles}, of which only some exist in the model")
    return all(present)


def _one(template: str, role: str, **kw) -> Stored:
    return Stored(template, (role,), **kw)


GPT2 = Family(
    name="gpt2",
    model_types=("gpt2",),
    globals=(
        _one("wte.weight", "embed.weight"),
        _one("wpe.weight", "pos.weight"),
        _one("ln_f.weight", "final_norm.weight"),
        _one("ln_f.bias", "final_norm.bias"),
        _one("lm_head.weight", "unembed.weight", prefixed=False),
    ),
    layer=(
        _one("h.{}.ln_1.weight", "attn_norm.weight"),
        _one("h.{}.ln_1.bias", "attn_norm.bias"),
        Stored("h.{}.attn.c_attn.weight", ("attn.q.weight", "attn.k.weight", "attn.v.weight"), transposed=True),
        Stored("h.{}.attn.c_attn.bias", ("attn.q.bias", "attn.k.bias", "attn.v.bias")),
        _one("h.{}.attn.c_proj.weight", "attn.o.weight", transposed=True),
        _one("h.{}.attn.c_proj.bias", "attn.o.bias"),
        _one("h.{}.ln_2.weight", "mlp_norm.weight"),
        _one("h.{}.ln_2.bias", "mlp_norm.bias"),
        _one("h.{}.mlp.c_fc.weight", "mlp.up.weight", transposed=True),
        _one("h.{}.mlp.c_fc.bias", "mlp.up.bias"),
        _one("h.{}.mlp.c_proj.weight", "mlp.down.weight", transposed=True),
        _one("h.{}.mlp.c_proj.bias", "mlp.down.bias"),
    ),
    prefixes=("transformer.", ""),
    ignored=r"(^|\.)attn\.(masked_)?bias$",  # the causal-mask buffers of older checkpoints
)

LLAMA = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    globals=(
        _one("embed_tokens.weight", "embed.weight"),
        _one("norm.weight", "final_norm.weight"),
        _one("lm_head.weight", "unembed.weight", prefixed=False),
    ),
    layer=(
        _one("layers.{}.input_layernorm.weight", "attn_norm.weight"),
        *(_one(f"layers.{{}}.self_attn.{p}_proj.{kind}", f"attn.{p}.{kind}")
          for p in ("q", "k", "v", "o") for kind in ("weight", "bias")),
        _one("layers.{}.post_attention_layernorm.weight", "mlp_norm.weight"),
        *(_one(f"layers.{{}}.mlp.{p}_proj.{kind}", f"mlp.{p}.{kind}")
          for p in ("gate", "up", "down") for kind in ("weight", "bias")),
    ),
    prefixes=("model.", ""),
    ignored=r"rotary_emb\.inv_freq$",
)

QWEN3 = Family(  # LLaMA names plus a per-head QK-norm (q_norm, k_norm over head_dim, before RoPE)
    name="qwen3",
    model_types=("qwen3",),
    globals=LLAMA.globals,
    layer=(
        _one("layers.{}.input_layernorm.weight", "attn_norm.weight"),
        *(_one(f"layers.{{}}.self_attn.{p}_proj.{kind}", f"attn.{p}.{kind}")
          for p in ("q", "k", "v", "o") for kind in ("weight", "bias")),
        _one("layers.{}.self_attn.q_norm.weight", "attn.q_norm.weight"),
        _one("layers.{}.self_attn.k_norm.weight", "attn.k_norm.weight"),
        _one("layers.{}.post_attention_layernorm.weight", "mlp_norm.weight"),
        *(_one(f"layers.{{}}.mlp.{p}_proj.{kind}", f"mlp.{p}.{kind}")  # no MLP biases in HF: never present
          for p in ("gate", "up", "down") for kind in ("weight", "bias")),
    ),
    prefixes=LLAMA.prefixes,
    ignored=LLAMA.ignored,
)

OLMO2 = Family(  # no pre-norms: each sublayer's output is normed (post_attention_layernorm,
    # post_feedforward_layernorm) before the residual add; q_norm/k_norm over all heads at once
    name="olmo2",
    model_types=("olmo2",),
    globals=LLAMA.globals,
    layer=(
        *(_one(f"layers.{{}}.self_attn.{p}_proj.{kind}", f"attn.{p}.{kind}")
          for p in ("q", "k", "v", "o") for kind in ("weight", "bias")),
        _one("layers.{}.self_attn.q_norm.weight", "attn.q_norm_all.weight"),
        _one("layers.{}.self_attn.k_norm.weight", "attn.k_norm_all.weight"),
        _one("layers.{}.post_attention_layernorm.weight", "attn_post_norm.weight"),
        *(_one(f"layers.{{}}.mlp.{p}_proj.{kind}", f"mlp.{p}.{kind}")  # no MLP biases in HF: never present
          for p in ("gate", "up", "down") for kind in ("weight", "bias")),
        _one("layers.{}.post_feedforward_layernorm.weight", "mlp_post_norm.weight"),
    ),
    prefixes=LLAMA.prefixes,
    ignored=LLAMA.ignored,
)

REFERENCE = Family(  # specgrow's own names: `specgrow.shape.tensor_name`
    name="reference",
    model_types=(),
    globals=tuple(_one(role, role) for role in GLOBAL_ROLES),
    layer=tuple(_one("layers.{}." + role, role) for role in LAYER_ROLES),
    prefixes=("",),
    ignored=r"(?!)",
)

def _features(**fixed) -> tuple[tuple[str, object], ...]:
    """`PLAIN` with ``fixed`` over it, as sorted pairs."""
    return tuple(sorted({**PLAIN, **fixed}.items()))


PLAIN = {"qk_norm": "none", "norm_position": "pre", "norm_offset": 0.0, "embed_scale": False,
         "attn_softcap": None, "logit_softcap": None, "attn_scale": None, "parallel_residual": False,
         "rope_local_theta": None, "rotary_dims": None}
GPT2 = dataclasses.replace(GPT2, features=_features(rope_scaling=()))
LLAMA = dataclasses.replace(LLAMA, features=_features())
QWEN3 = dataclasses.replace(QWEN3, features=_features(qk_norm="head"))
OLMO2 = dataclasses.replace(OLMO2, features=_features(qk_norm="all", norm_position="post"))

FAMILIES = {"reference": REFERENCE, "gpt2": GPT2, "llama": LLAMA, "qwen3": QWEN3, "olmo2": OLMO2}
