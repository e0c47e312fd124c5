"""Each expansion alone keeps the logits, under every norm x activation x position x tied.

Tolerance: fp32, atol = rtol = 1e-4 (`tests.helpers.ATOL`/`RTOL`).
"""

from __future__ import annotations

import itertools

import pytest

from tests.helpers import assert_preserved, make_spec, max_diff

NORMS = ("rmsnorm", "layernorm")
ACTIVATIONS = ("relu", "gelu", "silu", "swiglu")
POSITIONS = ("none", "learned", "rope")
COMBOS = list(itertools.product(NORMS, ACTIVATIONS, POSITIONS, (False, True)))


def preserving_step(kind, norm, position):
    """The preserving form of each expansion for this model (defaults where they preserve)."""
    return {
        "mlp": {"mlp": {"to": 48, "layers": [0, 2]}},
        "heads": {"heads": {"add": 2}},
        "value": {"value": {"to": 10, "layers": [1]}},
        "key": {"key": {"to": 16 if position == "rope" else 12}},
        "hidden": {"hidden": {"to": 32, "method": "duplicate"} if norm == "layernorm" else {"to": 24}},
        "layers": {"layers": {"add": 1, "at": 1}},
    }[kind]


@pytest.mark.parametrize("kind", ["mlp", "heads", "value", "key", "hidden", "layers"])
@pytest.mark.parametrize("norm,activation,position,tied", COMBOS,
                         ids=["-".join(map(str, c)) for c in COMBOS])
def test_expansion_alone_preserves(kind, norm, activation, position, tied):
    bias = (COMBOS.index((norm, activation, position, tied)) + len(kind)) % 2 == 0
    spec = make_spec([preserving_step(kind, norm, position)], norm=norm, activation=activation,
                     position=position, tie_embeddings=tied, bias=bias)
    assert_preserved(spec)


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("kind,step", [
    ("mlp", {"mlp": {"to": 64, "method": "duplicate", "noise": 0.05}}),
    ("heads", {"heads": {"add": 4, "method": "duplicate", "noise": 0.05, "layers": [1]}}),
    ("hidden", {"hidden": {"to": 48, "method": "duplicate", "noise": 0.05}}),
    ("hidden2", {"hidden": {"to": 32, "method": "duplicate"}}),
])
def test_duplicate_preserves(kind, step, norm, tied):
    spec = make_spec([step], norm=norm, tie_embeddings=tied, activation="swiglu", position="rope", bias=True)
    assert_preserved(spec)


def test_duplicate_noise_changes_weights_but_not_function():
    quiet = make_spec([{"mlp": {"to": 64, "method": "duplicate"}}])
    noisy = make_spec([{"mlp": {"to": 64, "method": "duplicate", "noise": 0.1}}])
    from tests.helpers import grow

    _, _, _, state_quiet = grow(quiet)
    _, _, _, state_noisy = grow(noisy)
    name = "layers.0.mlp.down.weight"
    assert (state_quiet[name] - state_noisy[name]).abs().max() > 0.01
    assert_preserved(noisy)


def test_key_rope_interleave_preserves_and_append_does_not():
    assert_preserved(make_spec([{"key": {"to": 24}}], position="rope"))  # x3: interleave by default
    assert max_diff(make_spec([{"key": {"to": 24, "placement": "append"}}], position="rope")) > 1e-2


@pytest.mark.parametrize("rescale", ["k", "q"])
def test_key_rescale_either_side(rescale):
    assert_preserved(make_spec([{"key": {"to": 12, "rescale": rescale}}]))


@pytest.mark.parametrize("step", [
    {"mlp": {"to": 48, "init": {"w_out": {"normal": 0.5}}}},
    {"heads": {"add": 2, "init": {"o": {"like_old": 1.0}}}},
    {"value": {"to": 10, "init": {"o": {"uniform": 0.5}}}},
    {"key": {"to": 12, "rescale": "none"}},
    {"key": {"to": 12, "init": {"k": {"normal": 1.0}}}},
    {"hidden": {"to": 24, "rescale": "gain"}},
    {"hidden": {"to": 24, "rescale": "none"}},
    {"hidden": {"to": 24, "init": {"embed": {"normal": 1.0}}}},
    {"hidden": {"to": 24, "init": {"write": {"normal": 1.0}}}},
    {"layers": {"add": 1, "init": {"w_out": {"normal": 0.5}}}},
    {"layers": {"add": 1, "at": 0, "init": {"o": {"normal": 0.5}}}},
])
def test_non_preserving_choices_change_logits(step):
    """The numeric check has teeth: each non-preserving init really moves the logits."""
    assert max_diff(make_spec([step])) > 1e-3


def test_hidden_zero_pad_under_layernorm_changes_logits():
    assert max_diff(make_spec([{"hidden": {"to": 24}}], norm="layernorm")) > 1e-3


def test_preserving_choice_not_in_the_paper():
    """Zero new up-projection rows with a random down-projection: act(0) = 0 keeps the function."""
    step = {"mlp": {"to": 48, "init": {"w_in": "zeros", "w_out": {"normal": 1.0}}}}
    assert_preserved(make_spec([step], activation="gelu"))
