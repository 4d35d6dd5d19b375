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
    step_runs: int = 0  # step-graph runs compared with the full graph (stepping parity)

    def summary(self) -> str:
        diffs = ", ".join(f"{k} {v:.1e}" for k, v in self.max_abs_diff.items())
        text = f"{self.cases} cases, batch sizes {sorted(self.batch_sizes)}"
        if self.lengths:
            text += (
                f", {len(self.lengths)} distinct lengths ({min(self.lengths)}..{max(self.lengths)})"
            )
        text = f"{text}; max |ort - torch|: {diffs}"
        if self.step_runs:
            text += f"; step model matches the full model over {self.step_runs} steps"
        return text


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


def check_stepping(
    full: ort.InferenceSession,
    full_spec: Signature,
    step: ort.InferenceSession,
    step_spec: Signature,
    cases: list[GoldenCase],
    atol: float,
    rtol: float,
    model_name: str,
) -> int:
    """Feeding each sequence's events one by one through the step graph (all rows of a
    case batched together) gives the full graph's per-position scores, and after each
    row's last event its sequence score; so does every prefix the case is cut to.
    Works from the contract's names only. Returns the number of step runs checked."""
    seq, st = full_spec.section, step_spec.section
    tokens_name, lengths_name = seq["tokens_input"], seq["lengths_input"]
    step_names = [t.name for t in step_spec.outputs]
    shapes = {t.name: t.shape[1:] for t in step_spec.inputs}
    runs = 0

    def fail(case: str, what: str, actual: np.ndarray, golden: np.ndarray) -> None:
        excess, diff, index = worst(actual, golden, atol, rtol)
        if excess > 0:
            raise ParityError(
                f"{model_name}: stepping parity failed in case {case!r}: {what} differs from "
                f"the full model by {diff:.3g} at index {list(index)} (allowed atol {atol:g} "
                f"+ rtol {rtol:g} x |full|)"
            )

    for case in cases:
        tokens, lengths = case.inputs[tokens_name], case.inputs[lengths_name]
        rows, t = tokens.shape
        full_out = run_case(full, full_spec, case)
        want_pos = full_out[seq["position_scores_output"]]
        want_seq = full_out[seq["sequence_scores_output"]]
        state = {
            s["input"]: np.full((rows, *shapes[s["input"]]), s["initial"], dtype=np.float32)
            for s in st["state"]
        }
        got_pos = np.zeros((rows, t), dtype=np.float32)
        got_seq = np.zeros_like(want_seq)
        prefixes = sorted({1, 2, max(1, t // 2), t})
        for i in range(t):
            feeds = {st["token_input"]: np.ascontiguousarray(tokens[:, i]), **state}
            out = dict(zip(step_names, step.run(step_names, feeds), strict=True))
            runs += 1
            got_pos[:, i] = np.where(i < lengths, out[st["position_score_output"]], 0.0)
            done = lengths == i + 1
            got_seq[done] = out[st["sequence_scores_output"]][done]
            state = {s["input"]: out[s["output"]] for s in st["state"]}
            if i + 1 in prefixes and i + 1 < t:  # the verdict so far = the full model on the prefix
                cut = {tokens_name: tokens[:, : i + 1], lengths_name: np.minimum(lengths, i + 1)}
                names = [o.name for o in full_spec.outputs]
                prefix = dict(zip(names, full.run(names, cut), strict=True))
                live = lengths > i
                fail(
                    f"{case.name}[prefix {i + 1}]",
                    "the running sequence score",
                    out[st["sequence_scores_output"]][live],
                    prefix[seq["sequence_scores_output"]][live],
                )
        fail(case.name, "the per-position scores", got_pos, want_pos)
        fail(case.name, "the final sequence score", got_seq, want_seq)
    return runs
