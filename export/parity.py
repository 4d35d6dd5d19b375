"""The parity gate: ONNX Runtime (CPU) must reproduce PyTorch on every golden case,
within the contract's tolerance rule (contract.model.worst)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from contract.model import GoldenCase, Signature, worst
from export.errors import ParityError


@dataclass
class ParityReport:
    cases: int = 0
    batch_sizes: set[int] = field(default_factory=set)
    lengths: set[int] = field(default_factory=set)  # sequence lengths covered
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per output

    def summary(self) -> str:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in self.max_abs_diff.items())
        text = f"{self.cases} cases, batch sizes {sorted(self.batch_sizes)}"
        if self.lengths:
            text += (
                f", {len(self.lengths)} distinct lengths ({min(self.lengths)}..{max(self.lengths)})"
            )
        return f"{text}; max |ort - torch|: {diffs}"


def cpu_session(model_bytes: bytes) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    # Golden batches are tiny; one thread avoids spin-waiting on a shared machine.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def run_case(
    session: ort.InferenceSession, spec: Signature, case: GoldenCase
) -> dict[str, np.ndarray]:
    names = [t.name for t in spec.outputs]
    values = session.run(names, {t.name: case.inputs[t.name] for t in spec.inputs})
    return dict(zip(names, values, strict=True))


def check_cases(
    session: ort.InferenceSession,
    spec: Signature,
    cases: list[GoldenCase],
    atol: float,
    rtol: float,
    model_name: str,
    report: ParityReport | None = None,
) -> ParityReport:
    """Raise :class:`ParityError` naming the first case/output outside tolerance."""
    report = report or ParityReport()
    for case in cases:
        got = run_case(session, spec, case)
        for t in spec.outputs:
            actual, golden = got[t.name], case.outputs[t.name]
            if actual.shape != golden.shape:
                raise ParityError(
                    f"{model_name}: parity gate failed in case {case.name!r}: output {t.name!r} "
                    f"has shape {list(actual.shape)} in ONNX Runtime, "
                    f"{list(golden.shape)} in PyTorch"
                )
            excess, diff, index = worst(actual, golden, atol, rtol)
            if excess > 0:
                raise ParityError(
                    f"{model_name}: parity gate failed in case {case.name!r}: output {t.name!r} "
                    f"differs by {diff:.3g} at index {list(index)} (ONNX Runtime "
                    f"{float(actual[index]):.6g}, PyTorch {float(golden[index]):.6g}; allowed "
                    f"atol {atol:g} + rtol {rtol:g} x |golden|)"
                )
            report.max_abs_diff[t.name] = max(
                report.max_abs_diff.get(t.name, 0.0),
                float(np.max(np.abs(actual.astype(np.float64) - golden))) if actual.size else 0.0,
            )
        first = case.inputs[spec.inputs[0].name]
        report.cases += 1
        report.batch_sizes.add(int(first.shape[0]))
        if "lengths" in case.inputs:
            report.lengths.update(int(n) for n in case.inputs["lengths"])
    return report


def _sequence_axes(spec: Signature, axis: str) -> dict[str, list[int]]:
    """Output name -> its axes named ``axis`` (position_scores: [1]; attention: [1, 2])."""
    return {t.name: sorted(a for a, n in t.axis_names.items() if n == axis) for t in spec.outputs}


def check_sequence_masking(
    session: ort.InferenceSession,
    spec: Signature,
    cases: list[GoldenCase],
    atol: float,
    rtol: float,
    model_name: str,
    axis: str = "sequence",
) -> None:
    """Every output is exactly 0 wherever one of its sequence axes is at a padded
    position, and each row alone gives what it gives in its batch (cut to its length)."""
    axes = _sequence_axes(spec, axis)
    for case in cases:
        got = run_case(session, spec, case)
        tokens, lengths = case.inputs["tokens"], case.inputs["lengths"]
        t = tokens.shape[1]
        padded = np.arange(t)[None, :] >= lengths[:, None]  # (B, T)
        for name, positional in axes.items():
            for a in positional:
                # (B, T) padding mask broadcast onto this output's axis a.
                shape = [len(lengths)] + [1] * (got[name].ndim - 1)
                shape[a] = t
                where = np.broadcast_to(padded.reshape(shape), got[name].shape)
                if np.any(got[name][where] != 0.0):
                    raise ParityError(
                        f"{model_name}: {name!r} is not exactly 0 at padded positions "
                        f"(axis {a}) in case {case.name!r}"
                    )
        for row in range(min(len(lengths), 8)):
            n = int(lengths[row])
            outputs = {}
            for name, positional in axes.items():
                value = got[name][row : row + 1]
                cut = [slice(0, n) if a in positional else slice(None) for a in range(value.ndim)]
                outputs[name] = value[tuple(cut)]
            alone = GoldenCase(
                name=f"{case.name}[row {row} alone]",
                inputs={
                    "tokens": tokens[row : row + 1, :n],
                    "lengths": lengths[row : row + 1],
                },
                outputs=outputs,
            )
            try:
                check_cases(session, spec, [alone], atol, rtol, model_name)
            except ParityError as exc:
                raise ParityError(f"{exc} -- padding changed a real row's result") from exc
