"""The quick schema check never accepts what jsonschema rejects (and agrees on what it accepts)."""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specgrow.errors import SpecError
from specgrow.spec.quickcheck import conforms
from specgrow.spec.schema import _validator, load_schema
from specgrow.spec.yaml_loader import load_yaml
from tests.malformed_cases import CASES

ROOT = Path(__file__).resolve().parents[1]
SPECS = sorted(ROOT.glob("examples/*.yaml")) + sorted(ROOT.glob("tests/golden/*.yaml")) + \
    sorted(ROOT.glob("proofs/specs/*.yaml"))


def agree(data):
    schema = load_schema()
    assert conforms(data, schema, schema) == _validator().is_valid(data)


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_agrees_on_every_spec_in_the_repository(path):
    agree(load_yaml(path.read_bytes(), str(path)).data)


@pytest.mark.parametrize("case_id,content", [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_agrees_on_malformed_specs(case_id, content):
    try:
        data = load_yaml(content, "bad.yaml").data
    except SpecError:
        return  # rejected before the schema
    agree(data)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 2**64) | st.floats(allow_nan=False) | st.text(max_size=6)
    | st.sampled_from(["zeros", "ones", "mlp", "rmsnorm", "rope", "duplicate", "gain"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["to", "add", "at", "layers", "init", "normal", "x", "method", "w_out"]), inner, max_size=3),
    max_leaves=6,
)


def paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths(item, prefix + (index,))


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(SPECS), st.data())
def test_agrees_on_random_mutations(path, data):
    doc = copy.deepcopy(load_yaml(path.read_bytes(), str(path)).data)
    for _ in range(data.draw(st.integers(1, 3))):
        where = data.draw(st.sampled_from(list(paths(doc))[1:]))
        parent = doc
        for part in where[:-1]:
            parent = parent[part]
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "replace":
            parent[where[-1]] = data.draw(JSON)
        elif action == "delete":
            del parent[where[-1]]
        elif isinstance(parent, dict):
            parent[data.draw(st.sampled_from(["extra", "layers", "noise", "bias", "kv_heads"]))] = data.draw(JSON)
    agree(doc)


def test_the_quick_check_is_conservative_about_unknown_keywords():
    assert not conforms(5, {"multipleOf": 2}, {})
    assert jsonschema is not None
