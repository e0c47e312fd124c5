"""Spec loading: canonical results of good specs, one located line for every bad one."""

from __future__ import annotations

import doctest
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

import specgrow.spec
from specgrow.errors import InputError, SpecError
from specgrow.spec import (
    DEFAULT_INIT,
    ROLES,
    DefaultRest,
    HeadsStep,
    LayersStep,
    LikeOld,
    Mark,
    MlpStep,
    Normal,
    Stage,
    Uniform,
    canonical,
    load_spec,
    load_spec_text,
    schema,
    yaml_loader,
)
from tests.malformed_cases import CASES

ROOT = Path(__file__).resolve().parent.parent
SIX = ROOT / "examples" / "six.yaml"
SCHEMA = ROOT / "specgrow" / "spec" / "specgrow-v1.schema.json"


def spec_of(steps: str, model: str = "", dims: str = "") -> specgrow.spec.Spec:
    return load_spec_text(
        "specgrow: 1\n"
        "model:\n"
        f"  dims: {{hidden: 64, mlp: 256, heads: 4, layers: 2, vocab: 256, positions: 64{dims}}}\n"
        + "".join(f"  {line}\n" for line in model.splitlines())
        + f"steps:\n{steps}"
    )


# ------------------------------------------------------------------ good specs
def test_six_example_loads():
    spec = load_spec(SIX)
    assert spec.path == str(SIX)
    assert spec.sha256 == hashlib.sha256(SIX.read_bytes()).hexdigest()
    assert spec.version == 1 and spec.seed == 0
    assert [step.kind for step in spec.steps] == [
        "mlp",
        "heads",
        "value",
        "key",
        "hidden",
        "layers",
    ]
    lines = SIX.read_text().splitlines()
    for step, mark in zip(spec.steps, spec.step_marks, strict=True):
        assert lines[mark.line - 1][mark.column - 1 :].startswith(step.kind)
    dims = spec.model.dims
    assert (dims.hidden, dims.mlp, dims.heads, dims.kv_heads, dims.key, dims.value) == (
        64,
        256,
        4,
        4,
        16,
        16,
    )
    assert spec.steps[5] == LayersStep(
        add=1,
        at=2,
        init=(
            ("o", DEFAULT_INIT["layers"]["o"]),
            ("rest", DefaultRest()),
            ("w_out", DEFAULT_INIT["layers"]["w_out"]),
        ),
    )


def test_defaults_are_expanded():
    spec = spec_of("  - mlp: {to: 512}\n  - heads: {add: 4}\n")
    model = spec.model
    assert (model.arch, model.norm, model.activation, model.position) == (
        "reference",
        "rmsnorm",
        "gelu",
        "learned",
    )
    assert (model.norm_eps, model.rope_theta) == (1e-6, 10000.0)
    assert (model.final_norm, model.tie_embeddings, model.bias) == (True, False, ())
    assert (model.dims.kv_heads, model.dims.key, model.dims.value) == (4, 16, 16)
    mlp = spec.steps[0]
    assert mlp == MlpStep(
        to=512,
        layers=(0, 1),
        method="zero",
        noise=0.0,
        init=tuple(sorted(DEFAULT_INIT["mlp"].items())),
    )
    assert isinstance(mlp.noise, float)
    for step in spec.steps:
        assert tuple(role for role, _ in step.init) == ROLES[step.kind]
    assert spec.seed == 0


def test_user_init_overlays_defaults():
    spec = spec_of(
        "  - mlp: {to: 512, init: {w_out: {normal: 0.02}}}\n"
        "  - layers: {add: 1, init: {rest: {like_old: 0.5}, o: {uniform: 1}}}\n"
    )
    assert spec.steps[0].init_for("w_out") == Normal(0.02)
    assert spec.steps[0].init_for("w_in") == LikeOld(1.0)
    assert spec.steps[1].init_for("rest") == LikeOld(0.5)
    assert spec.steps[1].init_for("o") == Uniform(1.0)
    assert isinstance(spec.steps[1].init_for("o").a, float)


def test_layers_resolve_after_insertion():
    spec = spec_of(
        "  - mlp: {to: 512, layers: [0]}\n"
        "  - layers: {add: 2, at: 1}\n"  # layers 1 and 2 copy layer 0 (mlp 512)
        "  - heads: {add: 4, layers: [3, 0]}\n"
        "  - mlp: {to: 600, layers: [1, 2]}\n"
        "  - mlp: {to: 700}\n"
        "  - layers: {add: 1}\n"
    )
    assert spec.steps[1].at == 1
    assert spec.steps[2].layers == (0, 3)
    assert spec.steps[3].layers == (1, 2)
    assert spec.steps[4].layers == (0, 1, 2, 3)
    assert spec.steps[5].at == 4


def test_inserted_layers_copy_their_neighbour():
    with pytest.raises(SpecError, match=r"steps\[2\].mlp.to: .*layer 1 has mlp 512, found to: 384"):
        spec_of(
            "  - mlp: {to: 512, layers: [0]}\n"
            "  - layers: {add: 1, at: 1}\n"
            "  - mlp: {to: 384, layers: [1]}\n"
        )
    with pytest.raises(SpecError, match=r"layer 0 has mlp 512, found to: 384"):
        spec_of(
            "  - mlp: {to: 512, layers: [0]}\n"
            "  - layers: {add: 1, at: 0}\n"
            "  - mlp: {to: 384, layers: [0]}\n"
        )


@pytest.mark.parametrize(
    ("position", "to", "placement", "expected"),
    [
        ("rope", 32, "auto", "interleave"),
        ("rope", 48, "auto", "interleave"),
        ("rope", 24, "auto", "append"),
        ("learned", 32, "auto", "append"),
        ("learned", 32, "interleave", "interleave"),
        ("rope", 32, "append", "append"),
    ],
)
def test_key_placement(position, to, placement, expected):
    spec = spec_of(
        f"  - key: {{to: {to}, placement: {placement}}}\n", model=f"position: {position}"
    )
    assert spec.steps[0].placement == expected
    assert spec.steps[0].rescale == "k"


def test_placement_auto_looks_at_every_selected_layer():
    grown = "  - key: {to: 24, layers: [1]}\n"  # layer 0 keeps key 16, layer 1 has 24
    assert (
        spec_of(grown + "  - key: {to: 32}\n", model="position: rope").steps[1].placement
        == "append"
    )
    assert (
        spec_of(grown + "  - key: {to: 48}\n", model="position: rope").steps[1].placement
        == "interleave"
    )
    with pytest.raises(
        SpecError, match=r"steps\[1\].key.placement: .*layer 1 has key 24, found to: 32"
    ):
        spec_of(grown + "  - key: {to: 32, placement: interleave}\n")


def test_yaml_12_floats():
    spec = spec_of(
        "  - mlp: {to: 512, method: duplicate, noise: 1e-3}\n",
        model="norm_eps: 1e-6\nrope_theta: 5E3",
    )
    assert spec.model.norm_eps == 1e-6 and spec.model.rope_theta == 5000.0
    assert spec.steps[0].noise == 1e-3


def test_grouped_query_heads():
    spec = spec_of(
        "  - heads: {add: 2}\n  - heads: {add: 4, method: duplicate}\n", dims=", kv_heads: 2"
    )
    assert spec.model.dims.kv_heads == 2
    assert spec.steps[1] == HeadsStep(
        add=4, layers=(0, 1), method="duplicate", noise=0.0, init=spec.steps[1].init
    )
    with pytest.raises(SpecError, match=r"whole kv groups of 2"):
        spec_of("  - heads: {add: 2}\n  - heads: {add: 3}\n", dims=", kv_heads: 2")


def test_hidden_duplicate():
    spec = spec_of(
        "  - hidden: {to: 192, method: duplicate, noise: 0.1}\n", model="tie_embeddings: true"
    )
    assert (spec.steps[0].to, spec.steps[0].method, spec.steps[0].rescale) == (
        192,
        "duplicate",
        "gain-and-eps",
    )


def test_specs_are_frozen_and_compared_by_structure():
    text = SIX.read_text()
    first, second = load_spec_text(text), load_spec_text(text.encode())
    assert first == second and hash(first) == hash(second)
    assert load_spec_text(text + "\n").sha256 != first.sha256
    with pytest.raises(AttributeError):
        first.seed = 1  # type: ignore[misc]


# ------------------------------------------------------------------ bad specs
@pytest.fixture(params=["libyaml", "python"])
def parser(request, monkeypatch):
    """Run a test with PyYAML's C parser when it has one, and with its Python parser."""
    if request.param == "python":
        monkeypatch.setattr(yaml_loader, "_FAST_LOADER", yaml.SafeLoader)
    return request.param


@pytest.mark.parametrize(
    ("text", "pattern", "line"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_malformed(parser, text, pattern, line):
    with pytest.raises(SpecError) as caught:
        load_spec_text(text, "bad.yaml")
    rendered = caught.value.render()
    assert "\n" not in rendered
    assert re.match(rf"^bad\.yaml:{line}:\d+: error: " + pattern.removeprefix("^"), rendered), (
        rendered
    )
    assert caught.value.exit_code == 1


def test_both_parsers_agree_on_a_good_spec(monkeypatch):
    data = SIX.read_bytes()
    fast = yaml_loader.load_yaml(data, "six.yaml")
    monkeypatch.setattr(yaml_loader, "_FAST_LOADER", yaml.SafeLoader)
    assert yaml_loader.load_yaml(data, "six.yaml") == fast


def test_case_table_is_large_and_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 30 and len(ids) == len(set(ids))


def test_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"specgrow: 1\nmodel: {}\nsteps: []\n")
    with pytest.raises(SpecError) as caught:
        load_spec(path)
    assert caught.value.render().startswith(f"{path}:2:")


@pytest.mark.parametrize("name", ["missing.yaml", "."])
def test_unreadable_file_is_input_error(tmp_path, name):
    path = tmp_path / name
    with pytest.raises(InputError) as caught:
        load_spec(path)
    assert caught.value.exit_code == 2
    assert re.match(
        rf"^{re.escape(str(path))}:1:1: error: cannot read spec: \S", caught.value.render()
    )


# ------------------------------------------------------------------ the schema
def _objects(node):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _objects(value)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value)


def test_schema_documents_every_key_and_closes_every_object():
    document = json.loads(SCHEMA.read_text())
    assert document == schema.load_schema()
    jsonschema.Draft202012Validator.check_schema(document)
    for node in _objects(document):
        for name, prop in node.get("properties", {}).items():
            assert prop.get("description"), name
        if "properties" in node:
            assert node.get("additionalProperties") is False, sorted(node["properties"])


def test_schema_symlink_points_at_the_packaged_schema():
    link = ROOT / "schemas" / "specgrow-v1.schema.json"
    assert link.is_symlink() and link.resolve() == SCHEMA.resolve()


# ------------------------------------------------------------------ imports and doctests
def test_loading_does_not_import_torch_or_sympy():
    code = (
        "import sys; from specgrow.spec import load_spec; load_spec(sys.argv[1]); "
        "bad = [m for m in ('torch', 'sympy') if m in sys.modules]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code, str(SIX)], check=True, cwd=ROOT)


@pytest.mark.parametrize("module", [specgrow.spec, canonical, schema, yaml_loader])
def test_doctests(module):
    result = doctest.testmod(module)
    assert result.failed == 0


def test_mark_is_one_based():
    doc = yaml_loader.load_yaml(b"a:\n  b: 1\n", "x")
    assert doc.mark(("a", "b")) == Mark(2, 6) and doc.key_mark(("a", "b")) == Mark(2, 3)


@pytest.mark.parametrize("raw,expected", [
    ("true", ("q", "k", "v", "o", "up", "gate", "down")),
    ("false", ()),
    ("[v, q, k]", ("q", "k", "v")),
])
def test_bias_is_the_set_of_projections_with_a_bias(raw, expected):
    assert spec_of("  - mlp: {to: 512}\n", model=f"bias: {raw}").model.bias == expected


def test_a_bias_list_admits_only_projections():
    with pytest.raises(SpecError, match="bias"):
        spec_of("  - mlp: {to: 512}\n", model="bias: [q, w_in]")


LLAMA = "arch: llama\nnorm: rmsnorm\nactivation: swiglu\nposition: rope"


@pytest.mark.parametrize("model,steps,message,line", [
    (LLAMA, "  - key: {to: 32}\n  - mlp: {to: 512}\n",
     "steps[0].key: llama has one head_dim for queries, keys and values: grow key and value "
     "together (layer 0 of the grown model has key 32, value 16)", 9),
    (LLAMA, "  - mlp: {to: 512}\n  - heads: {add: 2}\n", "steps[1].heads: llama configs need hidden divisible by heads",
     10),
    ("arch: gpt2\nnorm: layernorm", "  - hidden: {to: 128, method: duplicate}\n  - mlp: {to: 512}\n",
     "steps[0].hidden: gpt2 needs heads x head_dim = hidden and no kv grouping: layer 0 of the grown model has "
     "4 heads of 16", 7),
])
def test_hf_families_refuse_shapes_their_config_cannot_express(model, steps, message, line):
    """Located at the step that leaves the shape: the last one to change a width involved."""
    with pytest.raises(SpecError, match=re.escape(message)) as caught:
        spec_of(steps, model=model)
    assert (caught.value.line, caught.value.column) == (line, 5)


def test_a_shape_of_the_original_model_is_located_at_model_arch():
    with pytest.raises(SpecError, match=re.escape("model.arch: llama has one head_dim")) as caught:
        spec_of("  - mlp: {to: 512}\n", model=LLAMA, dims=", key: 16, value: 8")
    assert caught.value.line == 4


def test_hf_families_pad_partially_grown_layers_to_one_width():
    spec = spec_of("  - mlp: {to: 512, layers: [0]}\n  - heads: {add: 4, layers: [1]}\n", model=LLAMA)
    assert spec.step_padding == (False, False, True, True) and spec.stages == ()
    assert [spec.is_padding(i) for i in range(4)] == [False, False, True, True]
    assert spec.step_marks[2] == spec.step_marks[3] == Mark(4, 9)  # at model.arch
    added = spec.steps[2:]
    assert [(s.kind, s.layers) for s in added] == [("mlp", (1,)), ("heads", (0,))]
    assert added[0].to == 512 and added[1].add == 4
    assert spec_of("  - mlp: {to: 512, layers: [0]}\n").steps[1:] == ()  # reference models keep their shapes


# ------------------------------------------------------------------ growth plans (stages)
def plan_of(stages: str, model: str = "", dims: str = "") -> specgrow.spec.Spec:
    """A spec with top-level ``stages``; its first stage item is on line 5 plus the model's lines."""
    return load_spec_text(
        "specgrow: 1\n"
        "model:\n"
        f"  dims: {{hidden: 64, mlp: 256, heads: 4, layers: 2, vocab: 256, positions: 64{dims}}}\n"
        + "".join(f"  {line}\n" for line in model.splitlines())
        + f"stages:\n{stages}",
        "plan.yaml",
    )


TWO_STAGES = (
    "  - at_step: 2000\n"  # line 5
    "    steps:\n"
    "      - mlp: {to: 512}\n"
    "  - at_step: 6000\n"  # line 8
    "    steps:\n"
    "      - hidden: {to: 96}\n"
    "      - layers: {add: 1}\n"
)


def test_stages_flatten_into_steps_and_keep_their_marks():
    spec = plan_of(TWO_STAGES)
    assert spec.stages == (Stage(2000, 0, 1, Mark(5, 5)), Stage(6000, 1, 3, Mark(8, 5)))
    assert [step.kind for step in spec.steps] == ["mlp", "hidden", "layers"]
    assert spec.step_marks == (Mark(7, 9), Mark(10, 9), Mark(11, 9))
    assert spec.step_padding == (False, False, False)
    assert [spec.stage_of(i) for i in range(3)] == [0, 1, 1]
    assert [spec.step_path(i) for i in range(3)] == ["stages[0].steps[0]", "stages[1].steps[0]", "stages[1].steps[1]"]
    plain = spec_of("  - mlp: {to: 512}\n  - hidden: {to: 96}\n  - layers: {add: 1}\n")
    assert spec.steps == plain.steps and plain.stages == () and plain.stage_of(0) is None
    assert plain.step_path(2) == "steps[2]"


def test_each_stage_sees_the_shape_the_previous_one_left():
    spec = plan_of(
        "  - at_step: 0\n    steps: [{mlp: {to: 512, layers: [0]}}, {layers: {add: 1, at: 1}}]\n"
        "  - at_step: 1\n    steps: [{mlp: {to: 600, layers: [1, 0]}}, {mlp: {to: 700}}]\n"
    )
    assert spec.steps[2].layers == (0, 1) and spec.steps[3].layers == (0, 1, 2)
    assert spec.stages[1].start == 2 and spec.stages[1].stop == 4
    with pytest.raises(SpecError, match=r"stages\[1\].steps\[0\].mlp.to: .*layer 1 has mlp 512, found to: 384"):
        plan_of(
            "  - at_step: 0\n    steps: [{mlp: {to: 512, layers: [0]}}, {layers: {add: 1, at: 1}}]\n"
            "  - at_step: 1\n    steps: [{mlp: {to: 384, layers: [1]}}]\n"
        )


def test_hf_families_pad_at_the_end_of_every_stage():
    spec = plan_of(
        "  - at_step: 1000\n"  # line 9
        "    steps:\n"
        "      - mlp: {to: 512, layers: [0]}\n"
        "  - at_step: 3000\n"  # line 12
        "    steps:\n"
        "      - heads: {add: 4, layers: [1]}\n"
        "      - layers: {add: 1}\n",
        model=LLAMA,
    )
    assert [(s.kind, s.layers if s.kind != "layers" else s.at) for s in spec.steps] == [
        ("mlp", (0,)), ("mlp", (1,)),  # stage 0, then its padding
        ("heads", (1,)), ("layers", 2), ("heads", (0,)),  # stage 1 (the new layer copies layer 1), padding
    ]
    assert spec.step_padding == (False, True, False, False, True)
    assert spec.stages == (Stage(1000, 0, 2, Mark(9, 5)), Stage(3000, 2, 5, Mark(12, 5)))
    assert spec.step_marks[1] == spec.step_marks[4] == Mark(4, 9)  # padding: at model.arch
    assert spec.step_marks[2] == Mark(14, 9)
    assert [spec.step_path(i) for i in (1, 4)] == ["stages[0].steps[1]", "stages[1].steps[2]"]


def test_a_stage_that_leaves_an_unloadable_hf_model_is_refused_there():
    with pytest.raises(SpecError, match=re.escape("the model after stages[0] has hidden 64, 6 heads")):
        plan_of("  - at_step: 1\n    steps: [{heads: {add: 2}}]\n"
                "  - at_step: 2\n    steps: [{heads: {add: 2}}]\n", model=LLAMA)


def test_at_step_zero_and_large_are_fine():
    spec = plan_of(f"  - at_step: 0\n    steps: [{{mlp: {{to: 512}}}}]\n"
                   f"  - at_step: {2**62}\n    steps: [{{mlp: {{to: 600}}}}]\n")
    assert [stage.at_step for stage in spec.stages] == [0, 2**62]
