"""The proving step: a spec's certificate, or `UnprovedError` at its first failure.

The prover (and SymPy with it) loads on the first call, not when this module is imported.
"""

from __future__ import annotations

from specgrow.errors import UnprovedError

NOTHING_WRITTEN = "nothing written (--allow-unproved writes it anyway)"
WRITING_ANYWAY = "writing it (--allow-unproved)"


def prove(spec, allow_unproved: bool, log=print, hint: str = NOTHING_WRITTEN, anyway: str = WRITING_ANYWAY):
    """The spec's certificate. Anything not PROVED raises `UnprovedError` at its first failure,
    its message ended by ``hint``; with ``allow_unproved``, ``log`` gets a warning line instead,
    ended by ``anyway``."""
    from specgrow.verify.prover import prove_spec
    from specgrow.verify.report import failures
    from specgrow.verify.result import Verdict

    cert = prove_spec(spec)
    if cert.verdict is not Verdict.PROVED:
        first = failures(cert)[0]
        if not allow_unproved:
            raise UnprovedError(f"{first.message}; {hint}",
                                path=spec.path, line=first.line, column=first.column)
        log(f"{spec.path}:{first.line}:{first.column}: warning: {first.message}; {anyway}")
    return cert


def summary(cert) -> dict:
    """What an output keeps of a certificate, as plain data (sent between ranks): its Markdown,
    verdict and number of obligations."""
    from specgrow.verify.report import obligation_count, render_markdown

    return {"markdown": render_markdown(cert), "verdict": cert.verdict.value, "obligations": obligation_count(cert)}
