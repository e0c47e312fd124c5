"""The ``specgrow`` command line (DESIGN §3).

Exit codes: 0 success, 1 invalid spec / not PROVED / failed check / bad checkpoint, 2 usage
or IO. Every error is one line ``FILE:LINE:COL: error: MESSAGE`` on stderr (``check`` reports
on stdout, in the chosen format, and so does ``audit``). ``init``, ``validate``, ``check``,
``prove`` and ``plan`` never import torch, safetensors or `specgrow.lower`: they work from
``pip install specgrow``; only ``--input DIR`` reads safetensors headers through
`specgrow.lower`, with PyTorch if it is there (without it, the folder's config.json alone is
checked). ``audit`` (`specgrow.pipeline.audit`) works from that install too: it hashes and
proves, reading files through the stdlib-only `specgrow.lower.hashes`. ``apply`` needs the
``torch`` extra (`specgrow.extras`), says so in one line (exit 2) when it is missing, before
anything is read or written, imports torch only once the spec is valid, and records its
command line (argv and parsed options) in the manifest. SymPy (the IR's shapes are SymPy
expressions) is imported by the commands that compile a spec, never by ``validate``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys

from specgrow import __version__
from specgrow.collector import paused
from specgrow.errors import InputError, SpecgrowError
from specgrow.publish import output_target, refuse_overlap


INPUT_HELP = ("also check each spec's model against the HuggingFace folder DIR: its config.json and the shapes in "
              "its safetensors headers (every disagreement, at its line in the spec)")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2 (usage)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="specgrow", description="Grow trained Transformers by machine-checked specs.")
    parser.add_argument("--version", action="version", version=f"specgrow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    p = sub.add_parser("init", help="print a spec whose model restates a HuggingFace folder's config.json",
                       description="Print a complete spec for the HuggingFace checkpoint in DIR (gpt2, llama, "
                                   "mistral, qwen2, or a folder written by apply): its model section restates "
                                   "config.json; fill in its steps.")
    p.add_argument("folder", metavar="DIR")
    p.add_argument("--output", "-o", metavar="SPEC", help="write the spec to SPEC, a new file (never replaced)")

    p = sub.add_parser("validate", help="check specs against the schema and the semantic rules")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--input", metavar="DIR", help=INPUT_HELP)

    p = sub.add_parser("check", help="validate and prove specs; exit 0 only if every one is PROVED",
                       description="Validate and prove each spec. Exit 0 if all are PROVED, 1 if any is "
                                   "REFUTED, UNKNOWN or invalid, 2 if one cannot be read.")
    p.add_argument("specs", nargs="+", metavar="SPEC")
    p.add_argument("--format", choices=("text", "json", "sarif"), default="text",
                   help="report on stdout: located text lines and a summary (default), a JSON list of "
                        "certificates, or a SARIF 2.1.0 log")
    p.add_argument("--input", metavar="DIR", help=INPUT_HELP + "; a spec that disagrees is reported invalid")

    p = sub.add_parser("prove", help="write the proof certificate of a spec",
                       description="Prove a spec and write its certificate: Markdown by default, JSON with "
                                   "--json (one format per run). The certificate is written whatever the "
                                   "verdict; exit codes as check.")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--output", "-o", metavar="FILE",
                   help="write the certificate to FILE (replaced atomically; default: stdout)")
    p.add_argument("--json", action="store_true",
                   help="write the certificate as one JSON object (an entry of check --format json) "
                        "instead of Markdown")

    p = sub.add_parser("plan", help="print the per-tensor edits of a spec")
    p.add_argument("spec", metavar="SPEC")

    p = sub.add_parser("apply", help="grow a checkpoint (default: the reference model) by a spec")
    p.add_argument("spec", metavar="SPEC")
    p.add_argument("--output", "-o", required=True, metavar="DIR",
                   help="output directory (must not exist, unless --overwrite); apart from the spec and the input")
    p.add_argument("--input", metavar="PATH",
                   help="checkpoint to grow: a HuggingFace folder (config.json + model.safetensors, shards "
                        "with an index, or pytorch_model.bin), a .safetensors or .pt/.bin state dict, or a "
                        "specgrow output folder (default: the reference model initialised from the spec's seed)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"),
                   help="dtype of the written tensors (default: the input's)")
    p.add_argument("--allow-unproved", action="store_true",
                   help="write the grown model even if its spec is not PROVED or it fails the numeric check")
    p.add_argument("--max-shard-size", metavar="SIZE",
                   help="split the weights into shards of at most SIZE (e.g. 5GB, 500MB) with "
                        "model.safetensors.index.json; default: one model.safetensors")
    p.add_argument("--optimizer", metavar="FILE",
                   help="a saved Adam/AdamW optimizer.state_dict() (torch.save; keyed by parameter ids in "
                        "named_parameters() order, or by names) to grow with the weights into optimizer.pt")
    p.add_argument("--output-format", choices=("dcp", "safetensors"),
                   help="write a torch.distributed checkpoint (DCP) folder or safetensors (default: dcp for a DCP "
                        "input folder, one with .metadata, else safetensors); under torchrun --nproc-per-node N, "
                        "N ranks write the DCP output together")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output directory, atomically (never a file or a symbolic link)")
    p.add_argument("--quiet", "-q", action="store_true", help="print errors only")

    p = sub.add_parser("audit", help="check an apply output against its manifest, its spec and its lineage",
                       description="Re-hash every file of DIR, a folder written by apply, against its manifest, "
                                   "re-prove its spec.yaml against proof.md and walk its history/. Exit 0 if all "
                                   "agree, 1 naming each file or record that differs, 2 if DIR is not an apply "
                                   "output.")
    p.add_argument("folder", metavar="DIR")
    return parser


def _init(args) -> int:
    from specgrow.authoring import spec_for_folder, write_new

    text = spec_for_folder(args.folder)
    if args.output is None:
        sys.stdout.write(text)
    else:
        write_new(args.output, text)
        print(f"wrote {args.output}")
    return 0


def _folder_check(folder: str | None):
    """The `specgrow.authoring.FolderCheck` of ``--input``, or None without it."""
    if folder is None:
        return None
    from specgrow.authoring import FolderCheck

    return FolderCheck(folder, note=lambda line: print(line, file=sys.stderr))


def _validate(args) -> int:
    from specgrow.spec import load_spec

    folder = _folder_check(args.input)
    status = 0
    for path in args.specs:
        try:
            spec = load_spec(path)
            if folder is not None:
                folder(spec)
        except SpecgrowError as err:
            print(err.render(), file=sys.stderr)
            status = max(status, err.exit_code)
            continue
        stages = f" in {len(spec.stages)} stage(s)" if spec.stages else ""
        matches = "" if folder is None else f"; {folder.summary()}"
        print(f"{path}: valid ({len(spec.steps)} step(s){stages}){matches}")
    return status


def _import_frozen(name: str):
    """Import a module with the garbage collector off, then freeze what it built
    (`specgrow.collector`: none of it is garbage, and the collector need not scan it again)."""
    if name in sys.modules:
        return sys.modules[name]
    with paused(freeze=True):
        return importlib.import_module(name)


def _prove_file(path: str, folder=None):
    """The certificate of one spec file, or the `SpecgrowError` that stopped it (``folder``: a
    `specgrow.authoring.FolderCheck` the spec must agree with first)."""
    from specgrow.spec import load_spec

    try:
        spec = load_spec(path)
        if folder is not None:
            folder(spec)
        return _import_frozen("specgrow.verify.prover").prove_spec(spec)
    except SpecgrowError as err:
        return err


def _exit_code(outcome) -> int:
    if isinstance(outcome, SpecgrowError):
        return outcome.exit_code
    return 0 if outcome.verdict.value == "PROVED" else 1


def _check(args) -> int:
    from specgrow.verify.report import FORMATS

    folder = _folder_check(args.input)
    outcomes = [_prove_file(path, folder) for path in args.specs]
    sys.stdout.write(FORMATS[args.format](outcomes))
    return max(_exit_code(outcome) for outcome in outcomes)


def _prove(args) -> int:
    from specgrow.verify.report import render_markdown, spec_lines, write_atomic

    if args.output is not None:
        refuse_overlap(args.output, {"the spec": args.spec})
    cert = _prove_file(args.spec)
    if isinstance(cert, SpecgrowError):
        raise cert
    text = json.dumps(cert.as_dict(), indent=2, ensure_ascii=False) + "\n" if args.json else render_markdown(cert)
    report = spec_lines(cert)
    if args.output is None:
        sys.stdout.write(text)
        print("\n".join(report), file=sys.stderr)
    else:
        write_atomic(args.output, text)
        print("\n".join(report + [f"wrote {args.output}"]))
    return _exit_code(cert)


def _plan(args) -> int:
    from specgrow.planview import render
    from specgrow.spec import load_spec

    spec = load_spec(args.spec)
    compile_spec = _import_frozen("specgrow.transforms").compile_spec
    print(render(compile_spec(spec), spec.steps, spec.step_padding, spec.model.arch, spec.stages))
    return 0


def _require_torch(reason: str | None) -> None:
    """The one-line error (exit 2) of `apply` without the ``torch`` extra, if ``reason`` says it is missing."""
    if reason is not None:
        from specgrow.extras import needs_torch

        raise InputError(needs_torch("apply", reason), path="specgrow")


def _apply(args) -> int:
    from specgrow.extras import not_found, unimportable
    from specgrow.spec import load_spec

    _require_torch(not_found())  # before anything is read or written
    refuse_overlap(args.output, {"the spec": args.spec, "the input": args.input,
                                 "the optimizer state": args.optimizer})
    output_target(args.output, args.overwrite)  # refused now, not after the work
    from specgrow.lower.hashes import prefetch

    for path in (args.input, args.optimizer):  # the manifest's hashes of the input, while torch and SymPy load
        if path is not None:
            prefetch(path)
    spec = load_spec(args.spec)
    try:
        _import_frozen("specgrow.pipeline.apply")  # torch
    except ImportError:
        _require_torch(unimportable())  # installed, but it does not import
        raise
    _import_frozen("specgrow.verify.prover")  # SymPy, for the plan and the proof
    from specgrow.lower.dcp_read import is_dcp
    from specgrow.pipeline.record import command_line
    from specgrow.transforms import compile_spec

    output_format = args.output_format or ("dcp" if args.input and is_dcp(args.input) else "safetensors")
    if output_format == "dcp":
        for flag, value in (("--optimizer", args.optimizer), ("--max-shard-size", args.max_shard_size)):
            if value is not None:
                raise InputError(f"{flag} does not apply to --output-format dcp", path=flag)
        from specgrow.pipeline.dcp import grow_dcp_from_env

        grow_dcp_from_env(spec, args.input, args.output, device=args.device, dtype=args.dtype,
                          allow_unproved=args.allow_unproved, overwrite=args.overwrite,
                          log=(lambda *_: None) if args.quiet else print, invocation=command_line(*args.given))
        return 0
    plan = compile_spec(spec)
    from specgrow.pipeline.apply import ApplyOptions, apply_plan

    options = ApplyOptions(
        output=args.output, input=args.input, device=args.device, dtype=args.dtype,
        allow_unproved=args.allow_unproved, overwrite=args.overwrite,
        max_shard_size=args.max_shard_size, quiet=args.quiet, optimizer=args.optimizer,
    )
    apply_plan(spec, plan, options, log=(lambda *_: None) if args.quiet else print,
               invocation=command_line(*args.given))
    return 0


def _audit(args) -> int:
    from specgrow.pipeline.audit import audit

    report = audit(args.folder)
    print("\n".join(report.lines()))
    return 0 if report.passed else 1


COMMANDS = {"init": _init, "validate": _validate, "check": _check, "prove": _prove, "plan": _plan, "apply": _apply,
            "audit": _audit}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else [str(arg) for arg in argv]
    args = _parser().parse_args(argv)
    args.given = (argv, dict(vars(args)))  # the command line as given, for apply's manifest
    try:
        return COMMANDS[args.command](args)
    except SpecgrowError as err:
        print(err.render(), file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("specgrow: interrupted; nothing written", file=sys.stderr)
        return 130
    except OSError as err:
        print(InputError(str(err), path=getattr(err, "filename", None) or "specgrow").render(), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
