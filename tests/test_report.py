"""Reports of `specgrow check` / `prove` / `apply`: text, JSON, SARIF 2.1.0, Markdown, exit codes.

REFUTED and UNKNOWN certificates are built by hand here (the prover's own verdicts are
tested by its golden specs); the CLI sees them through a patched ``prove_spec``.
"""

from __future__ import annotations

import doctest
import hashlib
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

import specgrow.verify.report as report
from specgrow.cli import main
from specgrow.errors import SpecError, SpecErrors
from specgrow.spec import load_spec_text
from specgrow.verify.report import (
    RULES, failures, render_json, render_markdown, render_sarif, render_text, without_versions,
)
from specgrow.verify.result import (
    Certificate, Counterexample, Obligation, SideCondition, StepProof, Verdict, combine,
)
from tests.helpers import spec_text

ROOT = Path(__file__).resolve().parents[1]
SIX = str(ROOT / "examples" / "six.yaml")
LOCATED = re.compile(r"^(?P<file>[^:\n]+):(?P<line>\d+):(?P<col>\d+): error: (?P<msg>[^\n]+)$")

# ---------------------------------------------------------------- hand-built certificates
MLP_OK = Obligation(0, "mlp", (0, 1), Verdict.PROVED, "mlp'([x, 0]) = [mlp(x), 0]",
                    rules=(("elementwise-over-blocks", 2), ("zero-block-product", 3)),
                    lemmas=("gelu(0) = 0",))
NORM_OK = Obligation(1, "attention", (0, 1), Verdict.PROVED, "attn'([x, 0]) = [attn(x), 0]",
                     lemmas=("rmsnorm-zero-pad",),
                     side_conditions=(SideCondition("g_new - g*sqrt(h/h_new)", "0", True),))
MLP_BAD = Obligation(1, "mlp", (0, 1, 2), Verdict.REFUTED, "mlp'([x, 0]) = [mlp(x), 0]",
                     rules=(("elementwise-over-blocks", 2),),
                     residual="gelu(x*W_in_new)*W_out_new",
                     hint="W_out_new = 0 would have been needed")
EPS_BAD = Obligation(1, "attention", (0,), Verdict.REFUTED, "attn'([x, 0]) = [attn(x), 0]",
                     side_conditions=(SideCondition("eps_new - eps*h/h_new", "eps/3", False),))
STUCK = Obligation(0, "attention", (1,), Verdict.UNKNOWN, "attn'([x, 0]) = [attn(x), 0]",
                   stuck="Softmax(BlockMatrix([[A, B]]))")
WITNESS = Counterexample(dims={"hidden": 2, "mlp": 2}, seed=0, tokens=[1, 0], reference=[0.125, -1.5],
                         grown=[0.5, -1.25], max_abs_diff=0.375, tolerance="atol=1e-4, rtol=1e-4")


def certificate(path, verdicts, obligations=None, counterexample=None, steps_of=None):
    """A certificate with one step per verdict, located like the steps of ``steps_of`` (a Spec)."""
    steps = []
    for i, verdict in enumerate(verdicts):
        line, column = (steps_of.step_marks[i].line, steps_of.step_marks[i].column) if steps_of else (10 + i, 5)
        kind = steps_of.steps[i].kind if steps_of else "mlp"
        default = MLP_OK if verdict is Verdict.PROVED else (MLP_BAD if verdict is Verdict.REFUTED else STUCK)
        obs = (obligations or {}).get(i, (default,))
        steps.append(StepProof(i, kind, f"{kind}: step {i}", line, column, verdict, obs))
    return Certificate(path, "0" * 64, combine(verdicts),
                       tuple(steps), tuple(f"residual [x, 0] after {i}" for i in range(len(steps))),
                       counterexample, {"python": "3.x", "sympy": "1.x"}, 0.25)


def outcomes():
    proved = certificate("ok.yaml", [Verdict.PROVED, Verdict.PROVED], {1: (MLP_OK, NORM_OK)})
    refuted = certificate("bad.yaml", [Verdict.PROVED, Verdict.REFUTED], {1: (MLP_BAD, EPS_BAD)}, WITNESS)
    unknown = certificate("dunno.yaml", [Verdict.UNKNOWN])
    try:
        load_spec_text(spec_text([{"mlp": {"to": 48}}]) + "bogus: 1\n", "broken.yaml")
    except SpecError as err:
        invalid = err
    return [proved, refuted, unknown, invalid]


def fake_prover(verdicts_by_step=None, counterexample=None):
    """A stand-in for ``prove_spec``: each step PROVED unless ``verdicts_by_step`` says otherwise."""
    def prove_spec(spec):
        verdicts = [(verdicts_by_step or {}).get(i, Verdict.PROVED) for i in range(len(spec.steps))]
        cert = certificate(spec.path, verdicts, steps_of=spec,
                           counterexample=counterexample if Verdict.REFUTED in verdicts else None)
        return replace(cert, spec_sha256=spec.sha256)
    return prove_spec


def test_report_doctests():
    assert doctest.testmod(report).failed == 0


# ---------------------------------------------------------------- text
def test_text_lines_are_located_and_summarised():
    text = render_text(outcomes())
    lines = text.splitlines()
    assert lines[0] == "ok.yaml: PROVED (2 steps, 3 obligations, 0.25 s)"
    assert lines[-1] == "4 specs: 1 PROVED, 1 REFUTED, 1 UNKNOWN, 1 invalid"
    invalid = outcomes()[3]
    located = [m.groupdict() for m in map(LOCATED.match, lines) if m]
    assert [(d["file"], d["line"], d["col"]) for d in located] == [
        ("bad.yaml", "11", "5"), ("bad.yaml", "11", "5"), ("dunno.yaml", "10", "5"),
        ("broken.yaml", str(invalid.line), str(invalid.column))]
    assert located[0]["msg"] == ("steps[1] (mlp) REFUTED: mlp: residual gelu(x*W_in_new)*W_out_new; "
                                 "W_out_new = 0 would have been needed")
    assert located[1]["msg"] == ("steps[1] (mlp) REFUTED: attention: side condition eps_new - eps*h/h_new "
                                 "simplifies to eps/3, not 0")
    assert located[2]["msg"] == "steps[0] (mlp) UNKNOWN: attention: stuck at Softmax(BlockMatrix([[A, B]]))"
    assert located[3]["msg"] == " ".join(invalid.message.split())
    assert ("bad.yaml: note: counterexample: dims hidden=2, mlp=2; seed 0; max |Δ| 0.375 "
            "(tolerance atol=1e-4, rtol=1e-4)") in lines


def test_text_of_one_proved_spec():
    assert render_text(outcomes()[:1]).splitlines()[-1] == "1 spec: 1 PROVED, 0 REFUTED, 0 UNKNOWN, 0 invalid"


def test_non_proved_certificate_always_has_a_located_failure():
    step = StepProof(0, "key", "key: k -> 2k", 7, 3, Verdict.UNKNOWN, ())
    assert failures(Certificate("s.yaml", "", Verdict.UNKNOWN, (step,)))[0][:3] == (7, 3, Verdict.UNKNOWN)
    assert failures(Certificate("s.yaml", "", Verdict.REFUTED, ()))[0][:3] == (1, 1, Verdict.REFUTED)
    assert failures(outcomes()[0]) == []


# ---------------------------------------------------------------- json
def test_json_round_trips_certificates_and_errors():
    items = outcomes()
    data = json.loads(render_json(items))
    assert data[:3] == [c.as_dict() for c in items[:3]]
    assert data[1]["verdict"] == "REFUTED" and data[1]["counterexample"]["max_abs_diff"] == 0.375
    assert data[1]["steps"][1]["obligations"][0]["residual"] == "gelu(x*W_in_new)*W_out_new"
    assert data[3] == {"spec": "broken.yaml", "error": items[3].message,
                       "line": items[3].line, "column": items[3].column}


def test_json_names_the_spec_by_one_key():
    """Certificates and errors alike name their spec ``spec`` (and `prove --json` too)."""
    data = json.loads(render_json(outcomes()))
    assert [entry["spec"] for entry in data] == ["ok.yaml", "bad.yaml", "dunno.yaml", "broken.yaml"]
    assert all("spec_path" not in entry for entry in data)


def test_every_error_of_an_invalid_spec_is_one_entry():
    both = SpecErrors([SpecError("model.norm_eps: a", path="s.yaml", line=9, column=13),
                       SpecError("model.bias: b", path="s.yaml", line=15, column=9)])
    assert both.render() == "s.yaml:9:13: error: model.norm_eps: a\ns.yaml:15:9: error: model.bias: b"
    assert [e["line"] for e in json.loads(render_json([both]))] == [9, 15]
    assert render_text([both]).splitlines() == both.render().splitlines() + [
        "1 spec: 0 PROVED, 0 REFUTED, 0 UNKNOWN, 1 invalid"]
    results = json.loads(render_sarif([both]))["runs"][0]["results"]
    assert [r["locations"][0]["physicalLocation"]["region"]["startLine"] for r in results] == [9, 15]


# ---------------------------------------------------------------- sarif
def test_sarif_is_structurally_valid_2_1_0():
    items = outcomes()
    log = json.loads(render_sarif(items))
    assert log["version"] == "2.1.0" and "sarif-schema-2.1.0" in log["$schema"]
    assert len(log["runs"]) == 1
    driver = log["runs"][0]["tool"]["driver"]
    assert driver["name"] == "specgrow" and driver["version"]
    rule_ids = [rule["id"] for rule in driver["rules"]]
    assert rule_ids == [r[0] for r in RULES] and len(set(rule_ids)) == len(rule_ids)
    assert all(rule["shortDescription"]["text"] for rule in driver["rules"])
    results = log["runs"][0]["results"]
    assert [(r["ruleId"], r["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]) for r in results] == [
        ("specgrow/refuted", "bad.yaml"), ("specgrow/refuted", "bad.yaml"),
        ("specgrow/unknown", "dunno.yaml"), ("specgrow/invalid", "broken.yaml")]
    for result in results:
        assert result["ruleId"] in rule_ids and rule_ids[result["ruleIndex"]] == result["ruleId"]
        assert result["level"] == "error"
        assert isinstance(result["message"]["text"], str) and result["message"]["text"]
        region = result["locations"][0]["physicalLocation"]["region"]
        assert isinstance(region["startLine"], int) and region["startLine"] >= 1
        assert isinstance(region["startColumn"], int) and region["startColumn"] >= 1
    assert results[0]["locations"][0]["physicalLocation"]["region"] == {"startLine": 11, "startColumn": 5}
    assert "counterexample: dims hidden=2" in results[0]["message"]["text"]
    assert results[3]["locations"][0]["physicalLocation"]["region"] == {
        "startLine": items[3].line, "startColumn": items[3].column}


def test_sarif_of_proved_specs_has_no_results_and_uris_are_relative_posix():
    log = json.loads(render_sarif(outcomes()[:1]))
    assert log["runs"][0]["results"] == []
    cert = certificate("specs dir/grow.yaml", [Verdict.UNKNOWN])
    uri = json.loads(render_sarif([cert]))["runs"][0]["results"][0]["locations"][0]["physicalLocation"]
    assert uri["artifactLocation"]["uri"] == "specs%20dir/grow.yaml"


# ---------------------------------------------------------------- markdown
def test_markdown_has_every_section():
    proved, refuted = outcomes()[:2]
    text = render_markdown(refuted)
    assert text.startswith("# Proof certificate: bad.yaml\n")
    for needed in ("| sha256 | `" + "0" * 64 + "` |", "| verdict | **REFUTED** |",
                   "## Representation after each step", "| steps[1] (mlp) | residual [x, 0] after 1 |",
                   "## steps[0] (mlp): PROVED", "## steps[1] (mlp): REFUTED", "mlp: step 1 (line 11, column 5)",
                   "### mlp, layers 0, 1, 2: REFUTED", "Statement: `mlp'([x, 0]) = [mlp(x), 0]`",
                   "- Rules applied: `elementwise-over-blocks` ×2", "- Residual: `gelu(x*W_in_new)*W_out_new`",
                   "- Hint: W_out_new = 0 would have been needed", "### attention, layer 0: REFUTED",
                   "  - `eps_new - eps*h/h_new` simplifies to `eps/3`: NOT zero",
                   "## Counterexample", "hidden=2, mlp=2, seed 0", "- original logits: `[0.125, -1.5]`",
                   "- grown logits: `[0.5, -1.25]`", "- max |Δ| = 0.375"):
        assert needed in text, needed
    proved_text = render_markdown(proved)
    assert "- Lemmas used: `rmsnorm-zero-pad`" in proved_text
    assert "  - `g_new - g*sqrt(h/h_new)` simplifies to `0`: discharged" in proved_text
    assert "## Counterexample" not in proved_text
    assert text.rstrip().splitlines()[-1] == "Versions: python 3.x, specgrow 0.1.0, sympy 1.x"


def test_markdown_is_deterministic_without_timings():
    cert = outcomes()[1]
    slower = replace(cert, seconds=99.0, steps=tuple(
        replace(s, obligations=tuple(replace(o, seconds=7.0) for o in s.obligations)) for s in cert.steps))
    assert render_markdown(slower) == render_markdown(cert)
    newer = replace(cert, versions={"python": "3.y", "sympy": "2.0"})
    assert render_markdown(newer) != render_markdown(cert)
    assert without_versions(render_markdown(newer)) == without_versions(render_markdown(cert))


# ---------------------------------------------------------------- the command line
def write_spec(tmp_path, name="spec.yaml", steps=None):
    path = tmp_path / name
    path.write_text(spec_text(steps or [{"mlp": {"to": 48}}, {"mlp": {"to": 64}}]))
    return str(path)


def run(args, capsys):
    code = main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_check_exit_codes(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path)
    marks = load_spec_text(Path(spec).read_bytes(), spec).step_marks
    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover())
    code, out, _ = run(["check", spec], capsys)
    assert code == 0 and out.splitlines()[-1] == "1 spec: 1 PROVED, 0 REFUTED, 0 UNKNOWN, 0 invalid"

    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover({1: Verdict.REFUTED}, WITNESS))
    code, out, _ = run(["check", spec], capsys)
    assert code == 1
    assert f"{spec}:{marks[1].line}:{marks[1].column}: error: steps[1] (mlp) REFUTED: mlp: residual" in out

    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover({0: Verdict.UNKNOWN}))
    code, out, _ = run(["check", spec, "--format", "sarif"], capsys)
    results = json.loads(out)["runs"][0]["results"]
    assert code == 1 and [r["ruleId"] for r in results] == ["specgrow/unknown"]
    assert results[0]["locations"][0]["physicalLocation"]["region"]["startLine"] == marks[0].line

    bad = tmp_path / "bad.yaml"
    bad.write_text("specgrow: 2\n")
    code, out, _ = run(["check", spec, str(bad), "--format", "json"], capsys)
    data = json.loads(out)
    assert code == 1 and data[1]["spec"] == str(bad) and data[1]["line"] == 1 and "model" in data[1]["error"]

    code, out, _ = run(["check", spec, str(tmp_path / "missing.yaml")], capsys)
    assert code == 2 and re.search(r"missing\.yaml:1:1: error: cannot read spec", out)
    assert out.splitlines()[-1] == "2 specs: 0 PROVED, 0 REFUTED, 1 UNKNOWN, 1 invalid"


def test_check_usage_error_is_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["check", SIX, "--format", "xml"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_prove_writes_markdown_or_json(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path)
    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover())
    out = tmp_path / "cert.md"
    code, stdout, _ = run(["prove", spec, "-o", str(out)], capsys)
    assert code == 0 and stdout.splitlines()[-1] == f"wrote {out}"
    assert out.read_text().startswith(f"# Proof certificate: {spec}\n")
    code, stdout, err = run(["prove", spec, "--json"], capsys)
    assert code == 0 and json.loads(stdout)["verdict"] == "PROVED" and "PROVED" in err
    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover({1: Verdict.REFUTED}, WITNESS))
    code, _, _ = run(["prove", spec, "-o", str(out)], capsys)
    assert code == 1 and "## Counterexample" in out.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cert.md", "spec.yaml"]


def test_prove_of_invalid_spec_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("specgrow: 1\nmodel: {}\nsteps: []\n")
    code, out, err = run(["prove", str(bad), "-o", str(tmp_path / "cert.md")], capsys)
    assert code == 1 and out == "" and re.match(r"^[^\n]+:\d+:\d+: error: [^\n]+\n$", err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_cli_import_does_not_import_sympy():
    code = "import sys, specgrow.cli\nassert 'sympy' not in sys.modules and 'torch' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


def test_check_of_proved_spec_does_not_import_torch():
    code = (
        "import sys\n"
        "from specgrow.cli import main\n"
        f"assert main(['check', {SIX!r}]) == 0\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"six\.yaml: PROVED \(6 steps, \d+ obligations", proc.stdout)


# ---------------------------------------------------------------- apply refuses what is not proved
def test_apply_refuses_unproved_spec_then_records_the_proof(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path)
    marks = load_spec_text(Path(spec).read_bytes(), spec).step_marks
    out = tmp_path / "grown"
    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover({1: Verdict.REFUTED}, WITNESS))
    code, _, err = run(["apply", spec, "-o", str(out)], capsys)
    assert code == 1
    match = LOCATED.match(err.rstrip("\n"))
    assert match and (match["line"], match["col"]) == (str(marks[1].line), str(marks[1].column)), err
    assert match["msg"].startswith("steps[1] (mlp) REFUTED: mlp: residual") and "--allow-unproved" in match["msg"]
    assert not out.exists()
    code, stdout, _ = run(["apply", spec, "-o", str(out), "--allow-unproved"], capsys)
    assert code == 0 and "warning: steps[1] (mlp) REFUTED" in stdout
    manifest = json.loads((out / "specgrow-manifest.json").read_text())
    certificate_text = (out / "proof.md").read_text()
    assert manifest["proof"] == {"verdict": "REFUTED", "obligations": 2,
                                 "certificate_sha256": hashlib.sha256(certificate_text.encode()).hexdigest()}
    assert "| verdict | **REFUTED** |" in certificate_text


def test_apply_of_proved_spec_writes_certificate(tmp_path, capsys, monkeypatch):
    spec = write_spec(tmp_path)
    monkeypatch.setattr("specgrow.verify.prover.prove_spec", fake_prover())
    out = tmp_path / "grown"
    assert run(["apply", spec, "-o", str(out), "-q"], capsys)[0] == 0
    manifest = json.loads((out / "specgrow-manifest.json").read_text())
    assert manifest["proof"]["verdict"] == "PROVED" and manifest["numeric_check"]["passed"]
    assert (out / "proof.md").read_text().startswith(f"# Proof certificate: {spec}")
