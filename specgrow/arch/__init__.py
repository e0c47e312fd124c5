"""Checkpoint families as data: which stored tensor holds which roles, in which layout.

A role is a tensor of the reference model in the torch layout ``[out, in]``
(`specgrow.shape.GLOBAL_ROLES`, `LAYER_ROLES`). A `Stored` tensor is what a checkpoint
file holds: one role, or several concatenated along the role's output axis (GPT-2's fused
``c_attn`` = q | k | v), possibly transposed (GPT-2's Conv1D keeps ``[in, out]``). Experts
are packed in a live module (Mixtral's ``gate_up_proj`` (E, 2I, H) = gate | up along axis 1)
and saved one tensor per expert (`Stored.per_expert`, `Saved`).

>>> family = FAMILIES["gpt2"]
>>> [s.template for s in family.layer if "attn.q.weight" in s.roles]
['h.{}.attn.c_attn.weight']
>>> FAMILIES["llama"].name_of(FAMILIES["llama"].layer[1], 3, "model.")
'model.layers.3.self_attn.q_proj.weight'
>>> FAMILIES["olmo2"].display_name("attn.k_norm_all.weight", 1)
'model.layers.1.self_attn.k_norm.weight'
>>> FAMILIES["mixtral"].display_name("mlp.experts.up.weight", 0)
'model.layers.0.block_sparse_moe.experts.*.w3.weight'
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
    # the roles interleave head by head: the rows are cut into one block per head of the layer, each
    # block holding that head's rows of every role in turn (GPT-NeoX's query_key_value: [q_0 | k_0 | v_0 |
    # q_1 | ...]); `stored_segments` gives the order
    per_head: bool = False
    # the name ``save_pretrained`` writes where transformers renames the module's tensor on load and back on
    # save (GPT-NeoX's ``embed_out.weight`` for ``lm_head.weight``); read under either name, written under this
    # one in safetensors files (a live module's state_dict and DCP checkpoints use the template's)
    saved: str | None = None
    # the axis the roles are concatenated along: 0, or 1 for experts packed in a module (roles [experts, out,
    # in]: Mixtral's ``gate_up_proj`` (E, 2I, H) holds gate | up, as ``.chunk(2, dim=-1)`` reads it)
    axis: int = 0
    # the names ``save_pretrained`` writes each expert's slice of each role under, one template per role, "{e}"
    # standing for the expert (Qwen3-MoE's ``layers.{}.mlp.experts.{e}.gate_proj.weight``): on disk one tensor
    # per expert and role, each [out, in]; in a live module's state_dict and DCP checkpoints the template's
    per_expert: tuple[str, ...] = ()


@dataclass(frozen=True)
class Saved:
    """One tensor of a checkpoint: a stored tensor whole, or (``role`` set, `Stored.per_expert`) the slice
    of one role that one expert holds."""

    name: str
    stored: Stored
    layer: int | None
    role: str | None = None
    expert: int | None = None

    def shape(self, shape: ModelShape) -> tuple[int, ...]:
        if self.role is None:
            return stored_shape(self.stored, shape, self.layer)
        return shape.role_shape(self.role, self.layer)[1:]


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
    # which layers may have experts: "none", "every" (Mixtral) or "any" (Qwen3-MoE's mlp_only_layers)
    experts: str = "none"
    # the family a checkpoint becomes when its dense MLPs are upcycled into experts (llama -> mixtral)
    upcycled: str | None = None
    biases: bool = True  # False: the modules have no biases, whatever the config says (Mixtral)

    def name_of(self, stored: Stored, layer: int | None, prefix: str) -> str:
        name = stored.template.format(layer) if layer is not None else stored.template
        return prefix + name if stored.prefixed else name

    def stored_tensors(self, shape: ModelShape, prefix: str) -> list[tuple[str, Stored, int | None]]:
        """``(name, stored, layer)`` of every tensor a module of ``shape`` holds, in model order."""
        out = [(self.name_of(s, None, prefix), s, None) for s in self.globals if _has(shape, s, None)]
        for i in range(len(shape.layers)):
            out += [(self.name_of(s, i, prefix), s, i) for s in self.layer if _has(shape, s, i)]
        return out

    def saved_tensors(self, shape: ModelShape, prefix: str) -> list[Saved]:
        """Every tensor ``save_pretrained`` writes for a model of ``shape``, in model order: each stored
        tensor under its `saved_name`, or one tensor per role and expert (`Stored.per_expert`)."""
        return [part for _, stored, layer in self.stored_tensors(shape, prefix)
                for part in self._saved_parts(stored, layer, prefix, shape)]

    def layout(self, stored: Stored, layer: int | None, prefix: str, shape: ModelShape, names) -> list[Saved]:
        """The tensors a checkpoint holding ``names`` stores ``stored`` as: the module's one tensor when it has
        that name, else as ``save_pretrained`` writes it (`saved_name`, or one tensor per role and expert)."""
        module = self.name_of(stored, layer, prefix)
        if module in names:
            return [Saved(module, stored, layer)]
        parts = self._saved_parts(stored, layer, prefix, shape)
        if stored.per_expert or parts[0].name in names:
            return parts
        return [Saved(module, stored, layer)]  # missing either way: named as the module names it

    def _saved_parts(self, stored: Stored, layer: int | None, prefix: str, shape: ModelShape) -> list[Saved]:
        if not stored.per_expert:
            return [Saved(self.saved_name(stored, layer, prefix), stored, layer)]
        experts = shape.role_shape(stored.roles[0], layer)[0]
        return [Saved(self.expert_name(stored, layer, prefix, j, e), stored, layer, role, e)
                for j, role in enumerate(stored.roles) for e in range(experts)]

    def expert_name(self, stored: Stored, layer: int | None, prefix: str, role: int, expert) -> str:
        """The name ``save_pretrained`` gives expert ``expert``'s slice of ``stored``'s role number ``role``.

        >>> QWEN3_MOE.expert_name(QWEN3_MOE.stored_of("mlp.experts.up.weight", 0), 2, "model.", 1, 5)
        'model.layers.2.mlp.experts.5.up_proj.weight'
        """
        return prefix + stored.per_expert[role].format(layer, e=expert)

    def is_ignored(self, name: str) -> bool:
        return re.search(self.ignored, name) is not None

    def saved_name(self, stored: Stored, layer: int | None, prefix: str) -> str:
        """The name ``save_pretrained`` writes the stored tensor under (`Stored.saved`, else `name_of`)."""
        if stored.saved is None:
            return self.name_of(stored, layer, prefix)
        return self.name_of(dataclasses.replace(stored, template=stored.saved), layer, prefix)

    def module_name(self, name: str, prefix: str) -> str:
        """A stored tensor's ``name`` as the module calls it: a `Stored.saved` name (global tensors only)
        becomes its template's, any other name is kept.

        >>> GPT_NEOX.module_name("embed_out.weight", "gpt_neox."), GPT_NEOX.module_name("x", "")
        ('lm_head.weight', 'x')
        """
        for stored in self.globals:
            if stored.saved is not None and name == self.saved_name(stored, None, prefix):
                return self.name_of(stored, None, prefix)
        return name

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
        if stored.per_expert:  # one tensor per expert: "*" for the expert
            return self.expert_name(stored, layer, self.prefixes[0], stored.roles.index(role), "*")
        name = self.saved_name(stored, layer, self.prefixes[0])
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
    """The stored tensor's shape: its roles' shapes stacked on `Stored.axis`, reversed if Conv1D."""
    parts = [shape.role_shape(role, layer) for role in stored.roles]
    a = stored.axis
    out = parts[0][:a] + (sum(p[a] for p in parts),) + parts[0][a + 1:]
    return out[::-1] if stored.transposed else out


def stored_segments(stored: Stored, rows: list[int], heads: int | None = None) -> list[tuple[str, int, int]]:
    """The stored tensor's rows (`Stored.axis` of its ``[out, in]`` layout) as ``(role, start, stop)`` rows of its
    roles, in stored order: each role whole in turn, or (`Stored.per_head`) head by head. ``rows``: each
    role's rows; ``heads``: the layer's heads (per_head only; every role's rows split into as many blocks).

    >>> stored_segments(GPT_NEOX.layer[2], [4, 4, 4], heads=2)
    [('attn.q.weight', 0, 2), ('attn.k.weight', 0, 2), ('attn.v.weight', 0, 2), ('attn.q.weight', 2, 4), \
('attn.k.weight', 2, 4), ('attn.v.weight', 2, 4)]
    """
    if not stored.per_head:
        return [(role, 0, n) for role, n in zip(stored.roles, rows)]
    if not heads or any(n % heads for n in rows):
        raise ValueError(f"{stored.template} interleaves {stored.roles} head by head, but their rows {rows} "
                         f"are not {heads} equal blocks")
    return [(role, j * n // heads, (j + 1) * n // heads) for j in range(heads) for role, n in zip(stored.roles, rows)]


def segments_of(stored: Stored, shape: ModelShape, layer: int | None) -> list[tuple[str, int, int]]:
    """`stored_segments` of a stored tensor of ``shape`` (its roles' rows and the layer's heads)."""
    rows = [shape.role_shape(role, layer)[stored.axis] for role in stored.roles]
    return stored_segments(stored, rows, shape.layers[layer].heads if stored.per_head else None)


def _has(shape: ModelShape, stored: Stored, layer: int | None) -> bool:
    present = [shape.has_role(role, layer) for role in stored.roles]
    if any(present) and not all(present):  # e.g. GPT-2's c_attn.bias without a k bias
        raise ValueError(f"{stored.template} holds {stored.roles}, of which only some exist in the model")
    return all(present)


def _one(template: str, role: str, **kw) -> Stored:
    return Stored(template, (role,), **kw)


def _features(free: tuple[str, ...] = (), **fixed) -> tuple[tuple[str, object], ...]:
    """`PLAIN` with ``fixed`` over it, less the ``free`` fields (each checkpoint's own), as sorted pairs."""
    return tuple(sorted((key, value) for key, value in {**PLAIN, **fixed}.items() if key not in free))


# The model fields of the newer families' features, as the families without them have them
PLAIN = {"qk_norm": "none", "norm_position": "pre", "norm_offset": 0.0, "embed_scale": False,
         "attn_softcap": None, "logit_softcap": None, "attn_scale": None, "parallel_residual": False,
         "rope_local_theta": None, "rotary_dims": None}


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
    features=_features(rope_scaling=()),
)

# LLaMA's projections, named self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj (weight and bias), shared by
# the families that name them so
_LLAMA_ATTENTION = tuple(_one(f"layers.{{}}.self_attn.{p}_proj.{kind}", f"attn.{p}.{kind}")
                         for p in ("q", "k", "v", "o") for kind in ("weight", "bias"))
_LLAMA_MLP = tuple(_one(f"layers.{{}}.mlp.{p}_proj.{kind}", f"mlp.{p}.{kind}")
                   for p in ("gate", "up", "down") for kind in ("weight", "bias"))

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
        *_LLAMA_ATTENTION,
        _one("layers.{}.post_attention_layernorm.weight", "mlp_norm.weight"),
        *_LLAMA_MLP,
    ),
    prefixes=("model.", ""),
    ignored=r"rotary_emb\.inv_freq$",
    features=_features(),
    upcycled="mixtral",
)

QWEN3 = Family(  # LLaMA names plus a per-head QK-norm (q_norm, k_norm over head_dim, before RoPE)
    name="qwen3",
    model_types=("qwen3",),
    globals=LLAMA.globals,
    layer=(
        _one("layers.{}.input_layernorm.weight", "attn_norm.weight"),
        *_LLAMA_ATTENTION,
        _one("layers.{}.self_attn.q_norm.weight", "attn.q_norm.weight"),
        _one("layers.{}.self_attn.k_norm.weight", "attn.k_norm.weight"),
        _one("layers.{}.post_attention_layernorm.weight", "mlp_norm.weight"),
        *_LLAMA_MLP,  # no MLP biases in HF: never present
    ),
    prefixes=LLAMA.prefixes,
    ignored=LLAMA.ignored,
    features=_features(qk_norm="head"),
    upcycled="qwen3_moe",
)

# Mixture-of-experts layers as transformers' modules hold them: the router (mlp.gate), the experts packed,
# gate_up_proj (E, 2I, H) = gate | up along axis 1 and down_proj (E, H, I); ``save_pretrained`` writes one
# tensor per expert (transformers' conversion mapping merges them back on load)
def _experts(block: str, gate: str, up: str, down: str) -> tuple[Stored, ...]:
    experts = f"layers.{{}}.{block}.experts.{{e}}"
    return (
        Stored("layers.{}.mlp.experts.gate_up_proj", ("mlp.experts.gate.weight", "mlp.experts.up.weight"), axis=1,
               per_expert=(f"{experts}.{gate}.weight", f"{experts}.{up}.weight")),
        Stored("layers.{}.mlp.experts.down_proj", ("mlp.experts.down.weight",),
               per_expert=(f"{experts}.{down}.weight",)),
    )


QWEN3_MOE = Family(  # Qwen3's attention; MoE layers (router mlp.gate, experts mlp.experts.{e}.{gate,up,down}_proj on
    # disk) but the dense ones (mlp_only_layers, decoder_sparse_step) with Qwen3's MLP
    name="qwen3_moe",
    model_types=("qwen3_moe",),
    globals=LLAMA.globals,
    layer=(
        *QWEN3.layer,
        _one("layers.{}.mlp.gate.weight", "mlp.router.weight"),
        *_experts("mlp", "gate_proj", "up_proj", "down_proj"),
    ),
    prefixes=LLAMA.prefixes,
    ignored=LLAMA.ignored,
    features=_features(("renormalize",), qk_norm="head"),  # renormalize: norm_topk_prob
    experts="any",
)

MIXTRAL = Family(  # LLaMA's attention without biases, every layer a mixture of experts routed to renormalised top-k
    # weights; saved under block_sparse_moe (router gate, experts w1 = gate, w3 = up, w2 = down), held under mlp
    name="mixtral",
    model_types=("mixtral",),
    globals=LLAMA.globals,
    layer=(
        _one("layers.{}.input_layernorm.weight", "attn_norm.weight"),
        *_LLAMA_ATTENTION,  # no biases in HF: never present
        _one("layers.{}.post_attention_layernorm.weight", "mlp_norm.weight"),
        _one("layers.{}.mlp.gate.weight", "mlp.router.weight", saved="layers.{}.block_sparse_moe.gate.weight"),
        *_experts("block_sparse_moe", "w1", "w3", "w2"),
    ),
    prefixes=LLAMA.prefixes,
    ignored=LLAMA.ignored,
    features=_features(renormalize=True),
    experts="every",
    biases=False,
)

OLMO2 = Family(  # no pre-norms: each sublayer's output is normed (post_attention_layernorm,
    # post_feedforward_layernorm) before the residual add; q_norm/k_norm over all heads at once
    name="olmo2",
    model_types=("olmo2",),
    globals=LLAMA.globals,
    layer=(
        *_LLAMA_ATTENTION,
        _one("layers.{}.self_attn.q_norm.weight", "attn.q_norm_all.weight"),
        _one("layers.{}.self_attn.k_norm.weight", "attn.k_norm_all.weight"),
        _one("layers.{}.post_attention_layernorm.weight", "attn_post_norm.weight"),
        *_LLAMA_MLP,  # no MLP biases in HF: never present
        _one("layers.{}.post_feedforward_layernorm.weight", "mlp_post_norm.weight"),
    ),
    prefixes=LLAMA.prefixes,
    ignored=LLAMA.ignored,
    features=_features(qk_norm="all", norm_position="post"),
)

# Gemma 2 and Gemma 3 (text): sandwich norms (input_layernorm, post_attention_layernorm around attention,
# pre_ and post_feedforward_layernorm around the MLP), (1 + w) RMSNorm gains, no MLP biases; Gemma 3 adds a
# per-head QK-norm. The embedding normaliser (embed_scale) and the rotary frequencies are non-persistent
# buffers, recomputed on load.
_GEMMA_LAYER = (
    _one("layers.{}.input_layernorm.weight", "attn_norm.weight"),
    *_LLAMA_ATTENTION,
    _one("layers.{}.self_attn.q_norm.weight", "attn.q_norm.weight"),  # Gemma 3 only (qk_norm: head)
    _one("layers.{}.self_attn.k_norm.weight", "attn.k_norm.weight"),
    _one("layers.{}.post_attention_layernorm.weight", "attn_post_norm.weight"),
    _one("layers.{}.pre_feedforward_layernorm.weight", "mlp_norm.weight"),
    *_LLAMA_MLP,  # no MLP biases in HF: never present
    _one("layers.{}.post_feedforward_layernorm.weight", "mlp_post_norm.weight"),
)
# the softcaps and query_pre_attn_scalar are each checkpoint's own
_GEMMA = dict(norm_offset=1.0, embed_scale=True, norm_position="sandwich")
GEMMA2 = Family(
    name="gemma2",
    model_types=("gemma2",),
    globals=LLAMA.globals,
    layer=_GEMMA_LAYER,
    prefixes=LLAMA.prefixes,
    ignored=r"rotary_emb\.\w*inv_freq$|embed_tokens\.embed_scale$",
    features=_features(("attn_softcap", "logit_softcap", "attn_scale"), **_GEMMA),
)
# Gemma 3's attention never applies attn_logit_softcapping (transformers 5.24 does not pass it on): null
GEMMA3 = dataclasses.replace(GEMMA2, name="gemma3", model_types=("gemma3_text",), features=_features(
    ("logit_softcap", "attn_scale", "rope_local_theta"), qk_norm="head", **_GEMMA))

PHI3 = Family(  # LLaMA names, fused: qkv_proj = q | k | v (GQA), gate_up_proj = gate | up (`.chunk(2)`); no biases
    name="phi3",
    model_types=("phi3",),
    globals=LLAMA.globals,
    layer=(
        _one("layers.{}.input_layernorm.weight", "attn_norm.weight"),
        Stored("layers.{}.self_attn.qkv_proj.weight", ("attn.q.weight", "attn.k.weight", "attn.v.weight")),
        _one("layers.{}.self_attn.o_proj.weight", "attn.o.weight"),
        _one("layers.{}.post_attention_layernorm.weight", "mlp_norm.weight"),
        Stored("layers.{}.mlp.gate_up_proj.weight", ("mlp.gate.weight", "mlp.up.weight")),
        _one("layers.{}.mlp.down_proj.weight", "mlp.down.weight"),
    ),
    prefixes=LLAMA.prefixes,
    ignored=LLAMA.ignored,
    features=_features(("rotary_dims",)),
)

# Phi-3 and GPT-NeoX: the rotary width (partial_rotary_factor, rotary_pct) and GPT-NeoX's use_parallel_residual
# are each checkpoint's own
GPT_NEOX = Family(  # GPT-NeoX / Pythia: LayerNorms with biases, query_key_value interleaved head by head
    # ([q_j | k_j | v_j] for head j, as `.view(..., heads, 3 * head_size)` then `.chunk(3)` reads it), biased
    # dense layers, an untied head saved as embed_out (transformers 5 renames it lm_head on load)
    name="gpt_neox",
    model_types=("gpt_neox",),
    globals=(
        _one("embed_in.weight", "embed.weight"),
        _one("final_layer_norm.weight", "final_norm.weight"),
        _one("final_layer_norm.bias", "final_norm.bias"),
        _one("lm_head.weight", "unembed.weight", prefixed=False, saved="embed_out.weight"),
    ),
    layer=(
        _one("layers.{}.input_layernorm.weight", "attn_norm.weight"),
        _one("layers.{}.input_layernorm.bias", "attn_norm.bias"),
        Stored("layers.{}.attention.query_key_value.weight", ("attn.q.weight", "attn.k.weight", "attn.v.weight"),
               per_head=True),
        Stored("layers.{}.attention.query_key_value.bias", ("attn.q.bias", "attn.k.bias", "attn.v.bias"),
               per_head=True),
        _one("layers.{}.attention.dense.weight", "attn.o.weight"),
        _one("layers.{}.attention.dense.bias", "attn.o.bias"),
        _one("layers.{}.post_attention_layernorm.weight", "mlp_norm.weight"),
        _one("layers.{}.post_attention_layernorm.bias", "mlp_norm.bias"),
        _one("layers.{}.mlp.dense_h_to_4h.weight", "mlp.up.weight"),
        _one("layers.{}.mlp.dense_h_to_4h.bias", "mlp.up.bias"),
        _one("layers.{}.mlp.dense_4h_to_h.weight", "mlp.down.weight"),
        _one("layers.{}.mlp.dense_4h_to_h.bias", "mlp.down.bias"),
    ),
    prefixes=("gpt_neox.", ""),
    # the rotary buffers and the causal-mask buffers (attention.bias, attention.masked_bias) of older checkpoints
    ignored=r"rotary_emb\.inv_freq$|(^|\.)attention\.(masked_)?bias$",
    features=_features(("rotary_dims", "parallel_residual"), norm="layernorm"),
)

REFERENCE = Family(  # specgrow's own names: `specgrow.shape.tensor_name`
    name="reference",
    model_types=(),
    globals=tuple(_one(role, role) for role in GLOBAL_ROLES),
    layer=tuple(_one("layers.{}." + role, role) for role in LAYER_ROLES),
    prefixes=("",),
    ignored=r"(?!)",
    experts="any",
)

FAMILIES = {family.name: family for family in (REFERENCE, GPT2, LLAMA, QWEN3, OLMO2, GEMMA2, GEMMA3, PHI3, GPT_NEOX,
                                               QWEN3_MOE, MIXTRAL)}



def experts_problem(arch: str, moe: list[bool], renormalize: bool, bias: tuple[str, ...], model: str,
                    grown: bool) -> str | None:
    """Why no checkpoint of family ``arch`` holds ``model`` (e.g. "the grown model"), whose layers have
    experts where ``moe`` says, routed to renormalised top-k weights or not, with biases on ``bias``; None
    when one does. A ``grown`` model is written in the family its experts make it (`Family.upcycled`).

    >>> experts_problem("llama", [True, False], True, (), "the grown model", grown=True)
    'mixtral (what llama becomes with experts) has experts in every layer: layer 1 of the grown model keeps a \
dense MLP; upcycle every layer'
    """
    if not any(moe):
        return None
    family = FAMILIES[arch]
    if grown and family.upcycled is not None:
        family = FAMILIES[family.upcycled]
    name = family.name if family.name == arch else f"{family.name} (what {arch} becomes with experts)"
    if family.experts == "none":
        if not grown and family.upcycled is not None:
            return f"arch {arch} has no mixture-of-experts layers: a checkpoint with experts is arch {family.upcycled}"
        into = " and ".join(f"{f.name} (into {f.upcycled})" for f in FAMILIES.values() if f.upcycled)
        return f"arch {arch} has no mixture-of-experts layers; specgrow upcycles {into}"
    dense = [i for i, has in enumerate(moe) if not has]
    if family.experts == "every" and dense:
        layers = f"layer {dense[0]}" if len(dense) == 1 else f"layers {', '.join(map(str, dense))}"
        return (f"{name} has experts in every layer: {layers} of {model} keep{'s' if len(dense) == 1 else ''} a "
                "dense MLP; upcycle every layer")
    fixed = dict(family.features).get("renormalize")
    if fixed is not None and renormalize != fixed:
        return (f"{name} always renormalises the top-k weights to sum 1 (renormalize: true); {model} has "
                "renormalize: false")
    if not family.biases and bias:
        return f"{name} has no biases; {model} has biases on {', '.join(bias)}"
    return None


def grown_family(family: Family, after: ModelShape) -> Family:
    """The family a grown checkpoint is written in: ``family``, or the one its upcycled experts make it
    (`Family.upcycled`).

    >>> from specgrow.shape import LayerShape
    >>> grown_family(LLAMA, ModelShape(8, 16, 4, (LayerShape(32, 2, 2, 4, 4, experts=4, top_k=2),))).name
    'mixtral'
    """
    if family.upcycled is not None and any(s.experts for s in after.layers):
        return FAMILIES[family.upcycled]
    return family
