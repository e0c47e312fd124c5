"""Semantic checks and the canonical `Spec`.

Runs after the schema. Tracks the running shape per layer through the steps (each step
sees what the previous one left, across the stages of a growth plan too), refuses steps
that cannot apply to that shape, and expands every default so later stages never look at
raw YAML.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields, replace
from typing import Any

from specgrow.errors import SpecError
from specgrow.shape import LayerShape
from specgrow.spec.schema import format_path
from specgrow.spec.types import (
    DEFAULT_INIT,
    Dims,
    ExpertsStep,
    HeadsStep,
    HiddenStep,
    Init,
    InitMap,
    KeyStep,
    LayersStep,
    LikeOld,
    Mark,
    MlpStep,
    ModelSpec,
    PROJECTIONS,
    Normal,
    Ones,
    Spec,
    Stage,
    Step,
    Uniform,
    UpcycleStep,
    ValueStep,
    Written,
    Zeros,
)
from specgrow.spec.yaml_loader import Document, KeyPath

MAX_LAYERS = 4096
MODEL_FIELDS = ("arch", "dims", *(f"dims.{f.name}" for f in fields(Dims)), "norm", "norm_eps", "activation",
                "position", "rope_theta", "final_norm", "tie_embeddings", "bias", "qk_norm", "norm_position",
                "rope_scaling", "norm_offset", "embed_scale", "attn_softcap", "logit_softcap", "attn_scale",
                "layer_types", "rope_local_theta", "rotary_dims", "parallel_residual", "moe", "moe.experts",
                "moe.top_k", "moe.width", "moe.renormalize", "moe.dense_layers")
# the widths each step kind changes: a shape a HF config cannot express is blamed on the last step
# that changed one of the widths involved
CHANGES = {"mlp": ("mlp",), "heads": ("heads", "kv_heads"), "value": ("value",), "key": ("key",),
           "hidden": ("hidden",), "layers": (), "experts": ("experts", "mlp"), "upcycle": ("experts",)}


@dataclass(frozen=True)
class Shape:
    """The whole model's shape at some point in the steps."""

    hidden: int
    layers: tuple[LayerShape, ...]


def build_spec(doc: Document, source: bytes) -> Spec:
    """The canonical `Spec` of a schema-valid document read from ``source``; `SpecError` if a
    step cannot apply.

    A spec with ``stages`` is a growth plan: its stages' steps are checked and flattened in
    order into `Spec.steps` (the running shape just continues from one stage to the next),
    and each stage records the slice it owns.
    """
    data = doc.data
    model = _model(doc, data["model"])
    _family_features(doc, data["model"], model)
    dims = model.dims
    layer = LayerShape(dims.mlp, dims.heads, dims.kv_heads, dims.key, dims.value)  # widths: the type plays no part
    moe = replace(layer, mlp=model.expert_mlp, experts=model.experts, top_k=model.top_k)
    layers = tuple(moe if model.experts and i not in model.dense_layers else layer for i in range(dims.layers))
    grower = _Grower(doc, model, Shape(dims.hidden, layers))
    if model.arch != "reference":
        problem = _family_problem(model.arch, grower.shape, "the original model")
        if problem is not None:
            raise _fail(doc, ("model", "arch"), problem[1])
        moe = _experts_problem(model, grower.shape, model.renormalize, "the original model", grown=False)
        if moe is not None:
            raise _fail(doc, ("model", "moe") if "moe" in data["model"] else ("model", "arch"), moe)
    stages = []
    if "stages" in data:
        previous = None
        for number, item in enumerate(data["stages"]):
            at_step = item["at_step"]
            if previous is not None and at_step <= previous:
                raise _fail(doc, ("stages", number, "at_step"),
                            f"stages are applied in training order: expected more than {previous} "
                            f"(stages[{number - 1}].at_step), found {at_step}")
            previous = at_step
            start = len(grower.steps)
            grower.grow(("stages", number), item["steps"], f"the model after stages[{number}]")
            stages.append(Stage(at_step, start, len(grower.steps), doc.mark(("stages", number))))
    else:
        grower.grow((), data["steps"], "the grown model")
    return Spec(
        path=doc.file,
        sha256=hashlib.sha256(source).hexdigest(),
        version=data["specgrow"],
        model=model,
        seed=data.get("seed", 0),
        steps=tuple(grower.steps),
        step_marks=tuple(grower.marks),
        step_padding=tuple(grower.padding),
        stages=tuple(stages),
        model_written=_written(doc),
        source=source,
    )


def _written(doc: Document) -> tuple[tuple[str, Written], ...]:
    """Every field of `MODEL_FIELDS` as the file has it (`Spec.model_written`)."""
    out = []
    for name in MODEL_FIELDS:
        path = ("model", *name.split("."))
        if path in doc.value_marks:
            value = doc.data
            for key in path:
                value = value[key]
            value = tuple(value) if isinstance(value, list) else None if isinstance(value, dict) else value
            out.append((f"model.{name}", Written(doc.value_marks[path], True, value)))
        else:  # left out: at the key of the section that would hold it (model and dims are required)
            out.append((f"model.{name}", Written(doc.key_mark(path[:-1]), False)))
    return tuple(out)


class _Grower:
    """The steps so far, with their marks, and the running shape they leave."""

    def __init__(self, doc: Document, model: ModelSpec, shape: Shape):
        self.doc, self.model, self.shape = doc, model, shape
        self.checker = _Checker(doc, model)
        self.steps: list[Step] = []
        self.marks: list[Mark] = []
        self.padding: list[bool] = []
        self.changed: dict[str, tuple[int, KeyPath]] = {}  # width -> (number, path) of the last step changing it

    def grow(self, prefix: KeyPath, items: list, result: str) -> None:
        """Check and add the steps at ``prefix + ("steps",)``; for HF families, then pad every
        layer to one width so that ``result`` (e.g. "the grown model") is loadable."""
        for index, item in enumerate(items):
            ((kind, raw),) = item.items()
            path = prefix + ("steps", index)
            self.add(path + (kind,), kind, raw, self.doc.mark(path), False)
            self.changed.update(dict.fromkeys(CHANGES[kind], (len(self.steps), path + (kind,))))
        arch = self.model.arch
        if arch != "reference":
            for kind, raw in uniform_steps(self.shape):
                self.add(("model", "arch"), kind, raw, self.doc.mark(("model", "arch")), True)
            problem = _family_problem(arch, self.shape, result)
            if problem is not None:
                raise self.blame(*problem)
            renormalize = self.checker.renormalize  # None: no MoE layer
            moe = _experts_problem(self.model, self.shape, bool(renormalize), result, grown=True)
            if moe is not None:
                raise self.blame(("experts",), moe)

    def blame(self, widths: tuple[str, ...], message: str) -> SpecError:
        """The error of a shape a HF config cannot express, at the last step that changed one of ``widths``."""
        culprits = [self.changed[width] for width in widths if width in self.changed]
        if not culprits:
            return _fail(self.doc, ("model", "arch"), message)
        path = max(culprits)[1]
        return self.doc.error(path[:-1], f"{format_path(path)}: {message}")

    def add(self, path: KeyPath, kind: str, raw: dict, mark: Mark, padding: bool) -> None:
        step, self.shape = getattr(self.checker, kind)(path, raw, self.shape)
        self.steps.append(step)
        self.marks.append(mark)
        self.padding.append(padding)


def uniform_steps(shape: Shape):
    """Zero-init steps that grow every layer to the widest one: HF configs are uniform.

    Yields ``(kind, raw step)`` pairs in the order mlp, heads, value, key; each grows the
    layers that are narrower than the widest with the step's preserving defaults.
    """
    for kind in ("mlp", "heads", "value", "key"):
        # dense MLPs and experts have widths of their own (HF intermediate_size, moe_intermediate_size)
        groups = [[i for i, s in enumerate(shape.layers) if bool(s.experts) == moe] for moe in (False, True)] \
            if kind == "mlp" else [list(range(len(shape.layers)))]
        for group in groups:
            if not group:
                continue
            widths = {i: getattr(shape.layers[i], kind) for i in group}
            target = max(widths.values())
            short: dict[int, list[int]] = {}
            for i, width in widths.items():
                if width < target:
                    short.setdefault(target - width, []).append(i)
            for missing, layers in sorted(short.items()):
                if kind == "heads":
                    yield kind, {"add": missing, "layers": layers}
                else:
                    yield kind, {"to": target, "layers": layers}


def _experts_problem(model: ModelSpec, shape: Shape, renormalize: bool, label: str, grown: bool) -> str | None:
    """`specgrow.arch.experts_problem` of a shape: where a HuggingFace family has no experts, or not these."""
    from specgrow.arch import experts_problem

    return experts_problem(model.arch, [bool(s.experts) for s in shape.layers], renormalize, model.bias, label, grown)


def _family_problem(arch: str, shape: Shape, model: str) -> tuple[tuple[str, ...], str] | None:
    """The first width a HuggingFace config cannot express, as (the widths involved, the message):
    one head_dim; hidden divisible by heads (LLaMA, Gemma), equal to heads x head_dim (GPT-2, GPT-NeoX). Phi-3
    writes head_dim, so any hidden fits. ``model`` names the model checked, e.g. "the grown model"."""
    moe = {(s.experts, s.top_k) for s in shape.layers if s.experts}
    if len(moe) > 1:
        return ("experts",), (f"{arch} configs have one number of experts and one top_k for every MoE layer: "
                              f"{model} has (experts, top_k) {sorted(moe)}; grow every MoE layer alike")
    for i, layer in enumerate(shape.layers):
        if layer.key != layer.value:
            return ("key", "value"), (f"{arch} has one head_dim for queries, keys and values: grow key and value "
                                      f"together (layer {i} of {model} has key {layer.key}, value {layer.value})")
        if arch in ("llama", "gemma2", "gemma3") and shape.hidden % layer.heads:
            return ("hidden", "heads"), (f"{arch} configs need hidden divisible by heads (transformers refuses the "
                                         f"config otherwise): {model} has hidden {shape.hidden}, "
                                         f"{layer.heads} heads in layer {i}")
        if arch == "gpt2" and (layer.heads * layer.key != shape.hidden or layer.kv_heads != layer.heads):
            return ("hidden", "heads", "key"), ("gpt2 needs heads x head_dim = hidden and no kv grouping: "
                                                f"layer {i} of {model} has {layer.heads} heads of {layer.key} "
                                                f"({layer.kv_heads} kv heads) for hidden {shape.hidden}")
        if arch == "gpt_neox" and (layer.heads * layer.key != shape.hidden or layer.kv_heads != layer.heads):
            return ("hidden", "heads", "key"), (
                "gpt_neox has head_size = hidden / heads and no kv grouping (its config has no head_dim): "
                f"layer {i} of {model} has {layer.heads} heads of {layer.key} ({layer.kv_heads} kv heads) for "
                f"hidden {shape.hidden}; grow hidden together with heads (e.g. hidden x2 and heads x2, both by "
                "duplicate) or with key and value, so that heads x key = hidden at the end")
    return None


class _Checker:
    """One method per step kind: (path, raw mapping, shape before) -> (step, shape after)."""

    def __init__(self, doc: Document, model: ModelSpec):
        self.doc = doc
        self.model = model
        self.renormalize = model.renormalize if model.experts else None  # one setting for every MoE layer

    def fail(self, path: KeyPath, message: str, *, at_key: bool = False) -> SpecError:
        return _fail(self.doc, path, message, at_key=at_key)

    # ------------------------------------------------------------ one method per step kind
    def mlp(self, path: KeyPath, raw: dict, shape: Shape) -> tuple[MlpStep, Shape]:
        to, layers = raw["to"], self.select(path, raw, shape)
        method, noise = self.method_and_noise(path, raw)
        self.grows(path, to, shape, layers, "mlp")
        if method == "duplicate":
            for i in layers:
                current = shape.layers[i].mlp
                if to > 2 * current:
                    raise self.fail(
                        path + ("to",),
                        "method duplicate at most doubles per step: "
                        f"layer {i} has mlp {current}, found to: {to} (at most {2 * current})",
                    )
        listed = tuple(sorted(set(raw.get("experts", ()))))
        if listed:
            if method != "zero":
                raise self.fail(path + ("experts",), f"experts picks the experts that take the init: method zero "
                                                     f"only, found method {method}", at_key=True)
            moe = [i for i in layers if shape.layers[i].experts]
            if not moe:
                raise self.fail(path + ("experts",), "no selected layer has experts", at_key=True)
            for position, index in enumerate(raw["experts"]):
                count = min(shape.layers[i].experts for i in moe)
                if index >= count:
                    raise self.fail(path + ("experts", position), f"expected an expert index below {count} (the "
                                                                  f"selected MoE layers have {count} experts or more)")
        step = MlpStep(to, layers, method, noise, self.init(path, "mlp", raw), experts=listed)
        return step, self.resize(shape, layers, mlp=to)

    def heads(self, path: KeyPath, raw: dict, shape: Shape) -> tuple[HeadsStep, Shape]:
        add, layers = raw["add"], self.select(path, raw, shape)
        method, noise = self.method_and_noise(path, raw)
        grown = list(shape.layers)
        for i in layers:
            layer = shape.layers[i]
            group = layer.heads // layer.kv_heads
            if add % group:
                raise self.fail(
                    path + ("add",),
                    f"heads are added in whole kv groups of {group} (layer {i} has heads "
                    f"{layer.heads}, kv_heads {layer.kv_heads}); found add: {add}",
                )
            if method == "duplicate" and add > layer.heads:
                raise self.fail(
                    path + ("add",),
                    "method duplicate at most doubles per step: "
                    f"layer {i} has heads {layer.heads}, found add: {add} (at most {layer.heads})",
                )
            grown[i] = replace(
                layer, heads=layer.heads + add, kv_heads=layer.kv_heads + add // group
            )
        step = HeadsStep(add, layers, method, noise, self.init(path, "heads", raw))
        return step, replace(shape, layers=tuple(grown))

    def value(self, path: KeyPath, raw: dict, shape: Shape) -> tuple[ValueStep, Shape]:
        to, layers = raw["to"], self.select(path, raw, shape)
        self.grows(path, to, shape, layers, "value")
        step = ValueStep(to, layers, self.init(path, "value", raw))
        return step, self.resize(shape, layers, value=to)

    def key(self, path: KeyPath, raw: dict, shape: Shape) -> tuple[KeyStep, Shape]:
        to, layers = raw["to"], self.select(path, raw, shape)
        self.grows(path, to, shape, layers, "key")
        rope = self.model.position == "rope"
        if rope and to % 2:
            raise self.fail(
                path + ("to",), f"position rope needs an even key width, found to: {to}"
            )
        uneven = [i for i in layers if to % shape.layers[i].key]
        placement = raw.get("placement", "auto")
        if placement == "interleave" and uneven:
            i = uneven[0]
            raise self.fail(
                path + ("placement",),
                "interleave needs to a multiple of every selected layer's key width: "
                f"layer {i} has key {shape.layers[i].key}, found to: {to}",
            )
        odd = [i for i in layers if shape.layers[i].key % 2]
        if placement == "interleave" and odd:
            raise self.fail(
                path + ("placement",),
                "interleave places the two halves of each head's key dims, so it needs even key "
                f"widths: layer {odd[0]} has key {shape.layers[odd[0]].key}",
            )
        if self.model.qk_norm == "all":
            raise self.fail(
                path,
                "qk_norm all normalises all heads' queries (and keys) at once: growing the key width zero-pads "
                "that norm, which would need its eps x old/new width while the hidden norms keep theirs (the "
                "model has one norm_eps, HF rms_norm_eps), and its gain rescaled; no key growth is exact for "
                "this model (grow the other widths; heads by method: duplicate of every head)",
            )
        scaling = dict(self.model.rope_scaling).get("type")
        if rope and scaling in ("yarn", "dynamic"):
            raise self.fail(
                path,
                f"rope_scaling {scaling} computes each frequency from the head width itself ("
                + ("its correction range is a rounded fraction of the width" if scaling == "yarn"
                   else "its base is raised to width / (width - 2) beyond the trained length")
                + "), so in general no placement of the old dims keeps every old frequency; key growth is "
                "refused under this scaling (grow the other widths; under linear or llama3 key growth is exact)",
            )
        partial = self.model.rotary_dims is not None
        if partial and placement == "interleave":
            raise self.fail(
                path + ("placement",),
                f"with rotary_dims {self.model.rotary_dims} only the first {self.model.rotary_dims} dims of a head "
                "turn, at frequencies of that width: placement append keeps them (new dims join the part that "
                "does not turn); interleave would move them",
            )
        if placement == "auto":
            placement = "interleave" if rope and not uneven and not partial else "append"
        rescale = raw.get("rescale", "none" if self.model.attn_scale is not None else "k")
        step = KeyStep(to, layers, rescale, placement, self.init(path, "key", raw))
        return step, self.resize(shape, layers, key=to)

    def hidden(self, path: KeyPath, raw: dict, shape: Shape) -> tuple[HiddenStep, Shape]:
        to = raw["to"]
        method, noise = self.method_and_noise(path, raw)
        if to <= shape.hidden:
            raise self.fail(path + ("to",), f"must grow hidden {shape.hidden}, found to: {to}")
        if method == "duplicate":
            if to % shape.hidden:
                raise self.fail(
                    path + ("to",),
                    "method duplicate needs an integer multiple of hidden "
                    f"{shape.hidden}, found to: {to}",
                )
            model = self.model
            if model.tie_embeddings and not model.final_norm:
                raise self.fail(
                    path + ("method",),
                    "duplicate with tie_embeddings true needs final_norm true (the final norm "
                    "absorbs 1/m); untie the embeddings or use method zero",
                )
        rescale = raw.get("rescale", "gain-and-eps")
        step = HiddenStep(to, method, noise, rescale, self.init(path, "hidden", raw))
        return step, replace(shape, hidden=to)

    def layers(self, path: KeyPath, raw: dict, shape: Shape) -> tuple[LayersStep, Shape]:
        add, count = raw["add"], len(shape.layers)
        at = raw.get("at", count)
        if at > count:
            raise self.fail(
                path + ("at",),
                f"expected at most {count} (the model has {count} layers here), found {at}",
            )
        if count + add > MAX_LAYERS:
            raise self.fail(
                path + ("add",), f"expected at most {MAX_LAYERS} layers in all, found {count + add}"
            )
        neighbour = shape.layers[max(at - 1, 0)]
        grown = shape.layers[:at] + (neighbour,) * add + shape.layers[at:]
        step = LayersStep(add, at, self.init(path, "layers", raw))
        return step, replace(shape, layers=grown)

    def experts(self, path: KeyPath, raw: dict, shape: Shape) -> tuple[ExpertsStep, Shape]:
        to, method = raw["to"], raw.get("method", "duplicate")
        layers = self.select(path, raw, shape, default=[i for i, s in enumerate(shape.layers) if s.experts])
        noise = float(raw.get("noise", 0))
        if noise > 0 and method != "duplicate":
            raise self.fail(path + ("noise",), f"noise needs method duplicate, found noise {noise} with method {method}")
        if "init" in raw and method != "add":
            raise self.fail(path + ("init",), f"init fills new experts: only with method add, found method {method}",
                            at_key=True)
        if not layers:
            raise self.fail(path, "the model has no MoE layer here (upcycle dense layers first)")
        grown = list(shape.layers)
        top_k = []
        for i in layers:
            layer = shape.layers[i]
            if not layer.experts:
                raise self.fail(path + ("layers",), f"layer {i} has a dense MLP, not experts (upcycle it first)")
            if to <= layer.experts:
                raise self.fail(path + ("to",), f"must grow every selected layer: layer {i} has {layer.experts} "
                                                f"experts, found to: {to}")
            m = to // layer.experts
            if method != "add" and to % layer.experts:
                raise self.fail(path + ("to",), f"method {method} needs a multiple of the experts: layer {i} has "
                                                f"{layer.experts}, found to: {to}")
            if method == "split" and layer.mlp % m:
                raise self.fail(path + ("to",), f"method split cuts each expert's width into {m}: layer {i} has "
                                                f"experts of width {layer.mlp}, not divisible by {m}")
            want = layer.top_k if method == "add" else layer.top_k * m
            k = raw.get("top_k", want)
            if k > to:
                raise self.fail(path + ("top_k",), f"expected at most the {to} experts, found {k}")
            top_k.append(k)
            grown[i] = replace(layer, experts=to, top_k=k, mlp=layer.mlp // m if method == "split" else layer.mlp)
        step = ExpertsStep(to, layers, method, tuple(top_k), noise, self.init(path, "experts", raw))
        return step, replace(shape, layers=tuple(grown))

    def upcycle(self, path: KeyPath, raw: dict, shape: Shape) -> tuple[UpcycleStep, Shape]:
        experts, top_k = raw["experts"], raw["top_k"]
        layers = self.select(path, raw, shape, default=[i for i, s in enumerate(shape.layers) if not s.experts])
        if top_k > experts:
            raise self.fail(path + ("top_k",), f"expected at most the {experts} experts, found {top_k}")
        if not layers:
            raise self.fail(path, "every layer already has experts")
        for i in layers:
            if shape.layers[i].experts:
                raise self.fail(path + ("layers",), f"layer {i} already has experts")
        have = self.renormalize  # the MoE layers' setting so far: the model's, or an earlier upcycle's
        renormalize = raw.get("renormalize", True if have is None else have)
        if have is not None and renormalize != have:
            raise self.fail(path + ("renormalize",), f"the model's MoE layers have renormalize: {str(have).lower()}, "
                                                     "one setting for every layer (HF norm_topk_prob)")
        if self.model.bias and any(b in self.model.bias for b in ("up", "gate", "down")):
            raise self.fail(path, "experts carry no bias: the model's MLP has biases (" +
                            ", ".join(b for b in self.model.bias if b in ("up", "gate", "down")) + ")")
        grown = tuple(replace(s, experts=experts, top_k=top_k) if i in layers else s
                      for i, s in enumerate(shape.layers))
        init = self.init(path, "upcycle", raw)
        if renormalize and "router" not in raw.get("init", {}):
            # renormalised, any router is exact: a small random one, so that the experts do not all tie (a zero
            # router ties them for good: identical experts give it no gradient, and copies made later need a
            # unique top-k)
            init = tuple((role, Normal(0.02) if role == "router" else value) for role, value in init)
        step = UpcycleStep(experts, top_k, renormalize, layers, init)
        self.renormalize = renormalize
        if isinstance(step.init_for("router"), LikeOld):
            raise self.fail(path + ("init", "router"), "like_old needs an old tensor: a dense layer has no router "
                                                       "(zeros, or normal / uniform)")
        return step, replace(shape, layers=grown)

    # ------------------------------------------------------------ shared checks
    def select(self, path: KeyPath, raw: dict, shape: Shape, default=None) -> tuple[int, ...]:
        """`layers` as a sorted tuple of valid indices (``default``, else every layer, when not given)."""
        count = len(shape.layers)
        for position, index in enumerate(raw.get("layers", ())):
            if index >= count:
                raise self.fail(
                    path + ("layers", position),
                    f"expected a layer index below {count} (the model has {count} layers here), "
                    f"found {index}",
                )
        return tuple(sorted(raw.get("layers", range(count) if default is None else default)))

    def method_and_noise(self, path: KeyPath, raw: dict) -> tuple[str, float]:
        method, noise = raw.get("method", "zero"), float(raw.get("noise", 0))
        if noise > 0 and method == "zero":
            raise self.fail(
                path + ("noise",),
                f"noise needs method duplicate, found noise {noise} with method zero",
            )
        return method, noise

    def grows(
        self, path: KeyPath, to: int, shape: Shape, layers: tuple[int, ...], width: str
    ) -> None:
        for i in layers:
            current = getattr(shape.layers[i], width)
            if to <= current:
                raise self.fail(
                    path + ("to",),
                    "must grow every selected layer: "
                    f"layer {i} has {width} {current}, found to: {to}",
                )

    def resize(self, shape: Shape, layers: tuple[int, ...], **widths: int) -> Shape:
        grown = tuple(
            replace(s, **widths) if i in layers else s for i, s in enumerate(shape.layers)
        )
        return replace(shape, layers=grown)

    def init(self, path: KeyPath, kind: str, raw: dict) -> InitMap:
        """Every role of the step: the preserving defaults overlaid with the user's choices."""
        model = self.model
        given: dict = raw.get("init", {})
        exists = {
            "w_gate": ("a gated activation (swiglu, geglu_tanh)", model.activation in ("swiglu", "geglu_tanh")),
            "b_in": ("a bias on up", "up" in model.bias),
            "pos": ("position learned", model.position == "learned"),
        }
        for role in given:
            needs, present = exists.get(role, ("", True))
            if not present:
                raise self.fail(
                    path + ("init", role), f"role {role} exists only with {needs}", at_key=True
                )
        defaults = dict(DEFAULT_INIT[kind])
        if kind == "hidden" and model.norm_offset == 1:
            defaults["gain"] = Zeros()  # stored w = 0: gain 1 + w = 1, as elsewhere
        merged = {
            **defaults,
            **{role: _init_value(value) for role, value in given.items()},
        }
        return tuple(sorted(merged.items()))


def _model(doc: Document, raw: dict) -> ModelSpec:
    """The model with every default expanded; `SpecError` for inconsistent dims."""
    dims = raw["dims"]
    at = ("model", "dims")
    heads = dims["heads"]
    kv_heads = dims.get("kv_heads", heads)
    if kv_heads > heads or heads % kv_heads:
        raise _fail(
            doc, at + ("kv_heads",), f"expected a divisor of heads {heads}, found {kv_heads}"
        )
    if "key" in dims:
        key = dims["key"]
    elif dims["hidden"] % heads:
        raise _fail(
            doc,
            at,
            f"key is not given and hidden {dims['hidden']} is not divisible by heads {heads}; "
            "give key explicitly",
        )
    else:
        key = dims["hidden"] // heads
    position = raw.get("position", "learned")
    if "rope_scaling" in raw and position != "rope":
        raise _fail(doc, ("model", "rope_scaling"), f"rope_scaling needs position rope, found position {position}")
    if position == "rope" and key % 2:
        where = at + ("key",) if "key" in dims else at
        raise _fail(doc, where, f"position rope needs an even key width, found key {key}")
    return ModelSpec(
        arch=raw.get("arch", "reference"),
        dims=Dims(
            hidden=dims["hidden"],
            mlp=dims["mlp"],
            heads=heads,
            kv_heads=kv_heads,
            key=key,
            value=dims.get("value", key),
            layers=dims["layers"],
            vocab=dims["vocab"],
            positions=dims["positions"],
        ),
        norm=raw.get("norm", "rmsnorm"),
        norm_eps=float(raw.get("norm_eps", 1e-6)),
        activation=raw.get("activation", "gelu"),
        position=position,
        rope_theta=float(raw.get("rope_theta", 10000.0)),
        final_norm=raw.get("final_norm", True),
        tie_embeddings=raw.get("tie_embeddings", False),
        bias=_biases(raw.get("bias", False)),
        qk_norm=raw.get("qk_norm", "none"),
        norm_position=raw.get("norm_position", "pre"),
        rope_scaling=_rope_scaling(raw.get("rope_scaling")),
        norm_offset=float(raw.get("norm_offset", 0)),
        embed_scale=raw.get("embed_scale", False),
        attn_softcap=_optional_float(raw.get("attn_softcap")),
        logit_softcap=_optional_float(raw.get("logit_softcap")),
        attn_scale=_optional_float(raw.get("attn_scale")),
        layer_types=_layer_types(doc, raw, dims["layers"]),
        rope_local_theta=_optional_float(raw.get("rope_local_theta")),
        rotary_dims=_rotary_dims(doc, raw, position, key),
        parallel_residual=raw.get("parallel_residual", False),
        **_moe(doc, raw, dims),
    )


def _moe(doc: Document, raw: dict, dims: dict) -> dict:
    """The `ModelSpec` fields of ``model.moe`` (none for a dense model)."""
    moe = raw.get("moe")
    if moe is None:
        return {}
    at = ("model", "moe")
    if moe["top_k"] > moe["experts"]:
        raise _fail(doc, at + ("top_k",), f"expected at most the {moe['experts']} experts, found {moe['top_k']}")
    dense = tuple(sorted(moe.get("dense_layers", ())))
    for position, index in enumerate(moe.get("dense_layers", ())):
        if index >= dims["layers"]:
            raise _fail(doc, at + ("dense_layers", position),
                        f"expected a layer index below {dims['layers']}, found {index}")
    if "bias" in raw and set(_biases(raw["bias"])) & {"up", "gate", "down"}:
        raise _fail(doc, ("model", "bias"), "experts carry no bias: list only attention projections with moe")
    return {"experts": moe["experts"], "top_k": moe["top_k"], "expert_mlp": moe.get("width", dims["mlp"]),
            "renormalize": moe.get("renormalize", False), "dense_layers": dense}


def _rotary_dims(doc: Document, raw: dict, position: str, key: int) -> int | None:
    rotary = raw.get("rotary_dims")
    if rotary is None:
        return None
    where = ("model", "rotary_dims")
    if position != "rope":
        raise _fail(doc, where, f"rotary_dims needs position rope, found position {position}")
    if rotary % 2 or rotary > key:
        raise _fail(doc, where, f"expected an even number of rotary dims at most key {key}, found {rotary}")
    return None if rotary == key else rotary


def _layer_types(doc: Document, raw: dict, layers: int) -> tuple[str, ...]:
    types = tuple(raw.get("layer_types") or ())
    if types and len(types) != layers:
        raise _fail(doc, ("model", "layer_types"), f"expected one type per layer ({layers}), found {len(types)}")
    return types


def _family_features(doc: Document, raw: dict, model: ModelSpec) -> None:
    """`SpecError` at the first model field whose value the family of ``model.arch`` never has."""
    from specgrow.arch import FAMILIES

    family = FAMILIES.get(model.arch)
    for name, value in family.features if family is not None else ():
        if getattr(model, name) != value:
            shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else value
            found = getattr(model, name)
            found = "null" if found is None else str(found).lower() if isinstance(found, bool) else found
            where = ("model", name) if name in raw else ("model", "arch")
            written = "" if name in raw else " (not written: the default)"
            raise doc.error(where, f"model.{name}: arch {model.arch} has {name}: {shown} (every {model.arch} "
                                   f"checkpoint does), found {found}{written}")


def _optional_float(value):
    return None if value is None else float(value)


def _rope_scaling(raw) -> tuple:
    """The rope scaling as sorted (key, value) pairs, numbers as floats but the context length."""
    if raw is None:
        return ()
    out = {key: (float(value) if isinstance(value, (int, float)) and not isinstance(value, bool)
                 and key != "original_max_position_embeddings" else value) for key, value in raw.items()}
    return tuple(sorted(out.items()))


def _biases(raw) -> tuple[str, ...]:
    """``true``/``false``/a list of projections, as the tuple of projections with a bias."""
    if raw is True:
        return PROJECTIONS
    if raw is False:
        return ()
    return tuple(p for p in PROJECTIONS if p in raw)


def _fail(doc: Document, path: KeyPath, message: str, *, at_key: bool = False) -> SpecError:
    return doc.error(path, f"{format_path(path)}: {message}", at_key=at_key)


def _init_value(raw: Any) -> Init:
    if raw == "zeros":
        return Zeros()
    if raw == "ones":
        return Ones()
    ((name, number),) = raw.items()
    return {"normal": Normal, "uniform": Uniform, "like_old": LikeOld}[name](float(number))
