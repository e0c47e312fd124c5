"""Malformed specs and the one-line error each must produce.

Each case is (id, file bytes, regex the error message must match, expected line).
"""

from __future__ import annotations

HEAD = b"""specgrow: 1
model:
  dims: {hidden: 64, mlp: 256, heads: 4, layers: 2, vocab: 256, positions: 64}
steps:
"""  # steps start on line 5


def steps(*lines: str) -> bytes:
    """HEAD followed by one step per line (step i is on line 5 + i)."""
    return HEAD + "".join(f"  - {line}\n" for line in lines).encode()


def model(*lines: str, step: str = "mlp: {to: 512}") -> bytes:
    """A spec whose model has extra lines (4, 5, ...) after `dims`; the step is on line 5 + len(lines)."""
    extra = "".join(f"  {line}\n" for line in lines)
    return (HEAD.replace(b"steps:\n", extra.encode() + b"steps:\n")) + f"  - {step}\n".encode()


def stages(*lines: str) -> bytes:
    """A growth plan: HEAD with ``stages:`` instead of ``steps:``, then the given lines (line 5 on)."""
    return HEAD.replace(b"steps:\n", b"stages:\n") + "".join(f"{line}\n" for line in lines).encode()


STAGE_0 = ("  - at_step: 100", "    steps:", "      - mlp: {to: 512}")  # lines 5-7


GQA = b"""specgrow: 1
model:
  dims: {hidden: 64, mlp: 256, heads: 4, kv_heads: 2, layers: 2, vocab: 256, positions: 64}
steps:
  - heads: {add: 1}
"""

BILLION_LAUGHS = b"""a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]
b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]
c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]
d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]
e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]
f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]
g: &g [*f, *f, *f, *f, *f, *f, *f, *f, *f]
"""

INIT_FORMS = r"expected zeros, ones, \{normal: STD\}, \{uniform: A\} or \{like_old: FACTOR\}"

CASES: list[tuple[str, bytes, str, int]] = [
    # ------------------------------------------------------------ YAML syntax
    ("yaml-unclosed-bracket", steps("mlp: {to: 512", "heads: {add: 1}"), r"^invalid YAML: ", 6),
    ("yaml-bad-indent", b"specgrow: 1\nmodel:\n  arch: gpt2\n   norm: layernorm\n",
     r"^invalid YAML: mapping values are not allowed here", 4),
    ("yaml-tab", b"specgrow: 1\n\tmodel: {}\n", r"^invalid YAML: .*'\\t'", 2),
    ("duplicate-key", steps("mlp: {to: 512, to: 1024}"), r"^duplicate key 'to'$", 5),
    ("duplicate-top-key", HEAD + b"  - mlp: {to: 512}\nspecgrow: 1\n", r"^duplicate key 'specgrow'$", 6),
    ("billion-laughs", BILLION_LAUGHS, r"^YAML aliases/anchors are not allowed$", 1),
    ("anchor-alias", steps("mlp: &grow {to: 512}", "mlp: *grow"),
     r"^YAML aliases/anchors are not allowed$", 5),
    ("alias-only", steps("mlp: {to: 512}", "mlp: *grow"), r"^YAML aliases/anchors are not allowed$", 6),
    ("python-tag", steps('mlp: !!python/object/apply:os.system ["true"]'),
     r"^YAML tags are not allowed, found 'tag:yaml.org,2002:python/object/apply:os.system'$", 5),
    ("custom-tag", steps("mlp: !grow {to: 512}"), r"^YAML tags are not allowed, found '!grow'$", 5),
    ("str-tag", steps("mlp: {to: !!str 512}"), r"^YAML tags are not allowed", 5),
    ("two-documents", steps("mlp: {to: 512}") + b"---\nspecgrow: 1\n", r"^a spec is one YAML document", 6),
    ("deep-nesting", b"specgrow: " + b"[" * 200 + b"]" * 200 + b"\n", r"^nesting deeper than 64 levels$", 1),
    ("non-string-key", steps("mlp: {to: 512, 7: 1}"), r"^mapping keys must be strings, found 7$", 5),
    ("huge-integer", steps("mlp: {to: " + "9" * 200 + "}"), r"^number out of range: 9+\.\.\.$", 5),
    # ------------------------------------------------------------ bytes
    ("empty-file", b"", r"^empty spec$", 1),
    ("comments-only", b"# a spec\n\n# nothing here\n", r"^empty spec$", 1),
    ("top-level-list", b"- mlp: {to: 512}\n", r"^<top>: expected a mapping, found a list$", 1),
    ("top-level-scalar", b"\n\nhello\n", r"^<top>: expected a mapping, found a scalar$", 3),
    ("binary-garbage", bytes([0x00, 0x9F, 0x92, 0x96, 0x00, 0xFF, 0x13, 0x37, 0xC3, 0x28, 0x00]) * 8,
     r"^spec is not valid UTF-8: byte 0x9f", 1),
    ("nul-byte", b"specgrow: 1\nmodel: \x00\n", r"^invalid YAML: unprintable character #x0000 is not allowed$", 2),
    ("invalid-utf8", b"specgrow: 1\nmodel:\n  arch: gpt\xff2\n",
     r"^spec is not valid UTF-8: byte 0xff \(invalid start byte\)$", 3),
    ("too-large", b"specgrow: 1\n" + b"#" * (1024 * 1024), r"^spec is larger than 1 MiB", 1),
    # ------------------------------------------------------------ schema: structure
    ("missing-steps", HEAD.replace(b"steps:\n", b""),
     r"^<top>: missing required key 'steps' \(or 'stages', for a growth plan\)$", 1),
    ("missing-dims", b"specgrow: 1\nmodel: {arch: gpt2}\nsteps: [{mlp: {to: 512}}]\n",
     r"^model: missing required key 'dims'$", 2),
    ("empty-steps", HEAD.replace(b"steps:\n", b"steps: []\n"),
     r"^steps: expected at least 1 item\(s\), found an empty list$", 4),
    ("wrong-version", b"specgrow: 2\n" + steps("mlp: {to: 512}")[12:], r"^specgrow: expected 1, found 2$", 1),
    ("unknown-top-key", steps("mlp: {to: 512}") + b"sede: 3\n",
     r"^<top>: unknown key 'sede' \(expected one of: model, seed, specgrow, stages, steps\)$", 6),
    ("unknown-model-key", model("nrom: rmsnorm"),
     r"^model: unknown key 'nrom' \(expected one of: activation, arch, ", 4),
    ("unknown-step-key", steps("mlp: {to: 512}", "mlp: {widht: 1024, to: 1024}"),
     r"^steps\[1\].mlp: unknown key 'widht' \(expected one of: experts, init, layers, method, noise, to\)$", 6),
    ("unknown-step-kind", steps("widen: {to: 512}"),
     r"^steps\[0\]: expected exactly one of mlp, heads, value, key, hidden, layers, experts, upcycle; found widen$", 5),
    ("two-step-kinds", steps("{mlp: {to: 512}, heads: {add: 1}}"),
     r"^steps\[0\]: expected exactly one of mlp, heads, value, key, hidden, layers, experts, upcycle; found mlp, heads$", 5),
    ("empty-step", steps("{}"), r"^steps\[0\]: expected exactly one of .*; found an empty mapping$", 5),
    # ------------------------------------------------------------ schema: values
    ("string-for-int", steps("mlp: {to: abc}"),
     r"^steps\[0\].mlp.to: expected an integer, found string 'abc'$", 5),
    ("float-for-int", steps("mlp: {to: 512.0}"),
     r"^steps\[0\].mlp.to: expected an integer, found number 512.0$", 5),
    ("yes-is-not-bool", model("final_norm: yes"),
     r"^model.final_norm: expected a boolean \(true or false\), found string 'yes'$", 4),
    ("list-for-mapping", b"specgrow: 1\nmodel: [1, 2]\nsteps: [{mlp: {to: 512}}]\n",
     r"^model: expected a mapping, found a list \[1, 2\]$", 2),
    ("nan-eps", model("norm_eps: .nan"), r"^model.norm_eps: expected a number, found string '.nan'$", 4),
    ("bad-enum", model("norm: batchnorm"),
     r"^model.norm: expected one of rmsnorm, layernorm; found 'batchnorm'$", 4),
    ("zero-dim", HEAD.replace(b"heads: 4", b"heads: 0") + b"  - mlp: {to: 512}\n",
     r"^model.dims.heads: expected >= 1, found 0$", 3),
    ("negative-dim", HEAD.replace(b"hidden: 64", b"hidden: -64") + b"  - mlp: {to: 512}\n",
     r"^model.dims.hidden: expected >= 1, found -64$", 3),
    ("huge-dim", HEAD.replace(b"mlp: 256", b"mlp: 99999999") + b"  - mlp: {to: 512}\n",
     r"^model.dims.mlp: expected <= 1048576, found 99999999$", 3),
    ("negative-seed", b"seed: -1\n" + HEAD + b"  - mlp: {to: 512}\n", r"^seed: expected >= 0, found -1$", 1),
    ("hidden-layers", steps("hidden: {to: 96, layers: [0]}"),
     r"^steps\[0\].hidden.layers: hidden width is global; `layers` is not allowed there", 5),
    ("bad-init-form", steps("mlp: {to: 512, init: {w_out: {normal: -1}}}"),
     r"^steps\[0\].mlp.init.w_out: " + INIT_FORMS + r".*; found \{normal: -1\}$", 5),
    ("bad-init-word", steps("mlp: {to: 512, init: {w_out: zero}}"),
     r"^steps\[0\].mlp.init.w_out: " + INIT_FORMS + r".*; found 'zero'$", 5),
    ("unknown-init-role", steps("value: {to: 24, init: {q: zeros}}"),
     r"^steps\[0\].value.init: unknown key 'q' \(expected one of: o, v\)$", 5),
    ("duplicate-layer-index", steps("mlp: {to: 512, layers: [1, 1]}"),
     r"^steps\[0\].mlp.layers: expected unique items, found \[1, 1\]$", 5),
    # ------------------------------------------------------------ growth plans (stages)
    ("steps-and-stages", steps("mlp: {to: 512}") + b"stages:\n" + "\n".join(STAGE_0).encode() + b"\n",
     r"^<top>: expected exactly one of steps, stages; found both$", 6),
    ("stages-and-steps", stages(*STAGE_0) + b"steps:\n  - mlp: {to: 512}\n",
     r"^<top>: expected exactly one of steps, stages; found both$", 8),
    ("empty-stages", HEAD.replace(b"steps:\n", b"stages: []\n"),
     r"^stages: expected at least 1 item\(s\), found an empty list$", 4),
    ("stage-empty-steps", stages(*STAGE_0, "  - at_step: 200", "    steps: []"),
     r"^stages\[1\].steps: expected at least 1 item\(s\), found an empty list$", 9),
    ("stage-without-steps", stages(*STAGE_0, "  - at_step: 200"),
     r"^stages\[1\]: missing required key 'steps'$", 8),
    ("stage-without-at-step", stages("  - steps: [{mlp: {to: 512}}]"),
     r"^stages\[0\]: missing required key 'at_step'$", 5),
    ("stage-negative-at-step", stages("  - at_step: -1", "    steps: [{mlp: {to: 512}}]"),
     r"^stages\[0\].at_step: expected >= 0, found -1$", 5),
    ("stage-float-at-step", stages("  - at_step: 2e3", "    steps: [{mlp: {to: 512}}]"),
     r"^stages\[0\].at_step: expected an integer, found number 2000.0$", 5),
    ("stage-unknown-key", stages(*STAGE_0, "    at: 3"),
     r"^stages\[0\]: unknown key 'at' \(expected one of: at_step, steps\)$", 8),
    ("stage-list-for-mapping", stages("  - [100, {mlp: {to: 512}}]"),
     r"^stages\[0\]: expected a mapping, found a list", 5),
    ("stage-unknown-step-kind", stages(*STAGE_0, "      - widen: {to: 600}"),
     r"^stages\[0\].steps\[1\]: expected exactly one of mlp, heads, value, key, hidden, layers, experts, upcycle; found widen$", 8),
    ("stage-bad-step-value", stages(*STAGE_0, "      - mlp: {to: big}"),
     r"^stages\[0\].steps\[1\].mlp.to: expected an integer, found string 'big'$", 8),
    ("stage-at-step-repeated", stages(*STAGE_0, "  - at_step: 100", "    steps: [{mlp: {to: 600}}]"),
     r"^stages\[1\].at_step: stages are applied in training order: expected more than 100 "
     r"\(stages\[0\].at_step\), found 100$", 8),
    ("stage-at-step-decreasing", stages(*STAGE_0, "  - at_step: 50", "    steps: [{mlp: {to: 600}}]"),
     r"^stages\[1\].at_step: .*expected more than 100 \(stages\[0\].at_step\), found 50$", 8),
    ("stage-sees-previous-shape", stages(*STAGE_0, "  - at_step: 200", "    steps: [{mlp: {to: 384}}]"),
     r"^stages\[1\].steps\[0\].mlp.to: must grow every selected layer: layer 0 has mlp 512, found to: 384$", 9),
    ("stage-layer-index-after-insert",
     stages("  - at_step: 0", "    steps: [{layers: {add: 1}}]", "  - at_step: 1",
            "    steps: [{mlp: {to: 512, layers: [3]}}]"),
     r"^stages\[1\].steps\[0\].mlp.layers\[0\]: expected a layer index below 3 .*found 3$", 8),
    ("stage-hf-family-shape", stages("  - at_step: 10", "    steps: [{heads: {add: 2}}]").replace(
        b"model:\n", b"model:\n  arch: llama\n  activation: swiglu\n  position: rope\n"),
     r"^stages\[0\].steps\[0\].heads: llama configs need hidden divisible by heads .*: the model after "
     r"stages\[0\] has hidden 64, 6 heads in layer 0$", 9),
    # ------------------------------------------------------------ semantics: the model
    ("kv-heads-not-divisor", HEAD.replace(b"heads: 4,", b"heads: 4, kv_heads: 3,") + b"  - mlp: {to: 512}\n",
     r"^model.dims.kv_heads: expected a divisor of heads 4, found 3$", 3),
    ("hidden-not-divisible", HEAD.replace(b"hidden: 64", b"hidden: 66") + b"  - mlp: {to: 512}\n",
     r"^model.dims: key is not given and hidden 66 is not divisible by heads 4", 3),
    ("odd-key-rope", model("position: rope").replace(b"heads: 4,", b"heads: 4, key: 15,"),
     r"^model.dims.key: position rope needs an even key width, found key 15$", 3),
    # ------------------------------------------------------------ semantics: the steps
    ("shrink-mlp", steps("mlp: {to: 128}"),
     r"^steps\[0\].mlp.to: must grow every selected layer: layer 0 has mlp 256, found to: 128$", 5),
    ("shrink-after-grow", steps("mlp: {to: 512, layers: [1]}", "mlp: {to: 384}"),
     r"^steps\[1\].mlp.to: must grow every selected layer: layer 1 has mlp 512, found to: 384$", 6),
    ("shrink-value", steps("value: {to: 8}"),
     r"^steps\[0\].value.to: must grow .*layer 0 has value 16, found to: 8$", 5),
    ("same-key", steps("key: {to: 16}"),
     r"^steps\[0\].key.to: must grow .*layer 0 has key 16, found to: 16$", 5),
    ("shrink-hidden", steps("hidden: {to: 32}"),
     r"^steps\[0\].hidden.to: must grow hidden 64, found to: 32$", 5),
    ("at-out-of-range", steps("layers: {add: 1, at: 3}"),
     r"^steps\[0\].layers.at: expected at most 2 \(the model has 2 layers here\), found 3$", 5),
    ("layer-index-out-of-range", steps("mlp: {to: 512, layers: [0, 2]}"),
     r"^steps\[0\].mlp.layers\[1\]: expected a layer index below 2 .*found 2$", 5),
    ("layer-index-after-insert", steps("layers: {add: 1}", "mlp: {to: 512, layers: [3]}"),
     r"^steps\[1\].mlp.layers\[0\]: expected a layer index below 3 .*found 3$", 6),
    ("partial-kv-group", GQA, r"^steps\[0\].heads.add: heads are added in whole kv groups of 2 ", 5),
    ("hidden-duplicate-non-integer", steps("hidden: {to: 96, method: duplicate}"),
     r"^steps\[0\].hidden.to: method duplicate needs an integer multiple of hidden 64, found to: 96$", 5),
    ("hidden-duplicate-tied-no-final-norm",
     model("tie_embeddings: true", "final_norm: false", step="hidden: {to: 128, method: duplicate}"),
     r"^steps\[0\].hidden.method: duplicate with tie_embeddings true needs final_norm true", 7),
    ("mlp-duplicate-more-than-double", steps("mlp: {to: 1024, method: duplicate}"),
     r"^steps\[0\].mlp.to: method duplicate at most doubles per step: layer 0 has mlp 256", 5),
    ("heads-duplicate-more-than-double", steps("heads: {add: 5, method: duplicate}"),
     r"^steps\[0\].heads.add: method duplicate at most doubles per step", 5),
    ("noise-with-zero", steps("mlp: {to: 512, noise: 0.01}"),
     r"^steps\[0\].mlp.noise: noise needs method duplicate, found noise 0.01 with method zero$", 5),
    ("w-gate-without-swiglu", steps("mlp: {to: 512, init: {w_gate: zeros}}"),
     r"^steps\[0\].mlp.init.w_gate: role w_gate exists only with a gated activation \(swiglu, geglu_tanh\)$", 5),
    ("b-in-without-bias", steps("mlp: {to: 512, init: {b_in: zeros}}"),
     r"^steps\[0\].mlp.init.b_in: role b_in exists only with a bias on up$", 5),
    ("pos-without-learned", model("position: rope", step="hidden: {to: 96, init: {pos: zeros}}"),
     r"^steps\[0\].hidden.init.pos: role pos exists only with position learned$", 6),
    ("odd-key-step-rope", model("position: rope", step="key: {to: 25}"),
     r"^steps\[0\].key.to: position rope needs an even key width, found to: 25$", 6),
    ("interleave-not-multiple", steps("key: {to: 24, placement: interleave}"),
     r"^steps\[0\].key.placement: interleave needs to a multiple of every selected layer's key width", 5),
    ("interleave-odd-key", b"""specgrow: 1
model:
  dims: {hidden: 12, mlp: 24, heads: 4, key: 3, layers: 2, vocab: 16, positions: 8}
steps:
  - key: {to: 6, placement: interleave}
""", r"^steps\[0\].key.placement: interleave places the two halves of each head's key dims, so it needs even", 5),
]
