"""A sequence model's step graph (model.json "step", e.g. lstm/<v>/step.onnx) behind its
own batcher: one event per session per row, so events arriving from many streams at
once share one ONNX Runtime run. Sessions (services/core/sessions.py) hold the state; this
module only turns (event, state) into (scores, next state).

The step graph is opened, golden-checked and warmed up with the same runtime code as
the full model (through a ModelSpec view of it), so its goldens are re-checked at load
and a step graph that fails them keeps the whole model version from becoming ready.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from contract.model import ModelLoadError, ModelSpec, StepSpec
from services.batching.batcher import Batcher
from services.batching.merge import BatchLayout
from services.batching.threads import InferenceThreads
from services.core.runtime import ModelSession, check_goldens, open_session, warm_up
from services.ops.metrics import Metrics
from services.settings import ServingConfig, Settings

State = dict[str, np.ndarray]  # state input name -> (1, ...) array


def step_view(spec: ModelSpec) -> ModelSpec:
    """The step graph as a ModelSpec (file, tensors, goldens), for the runtime helpers."""
    step = spec.step
    assert step is not None
    return dataclasses.replace(
        spec,
        onnx_file=step.onnx_file,
        sha256=step.sha256,
        inputs=step.inputs,
        outputs=step.outputs,
        goldens=step.goldens,
        classify=None,
        sequence=None,
        step=None,
    )


def open_step(spec: ModelSpec, config: ServingConfig, settings: Settings) -> ModelSession | None:
    """Blocking (call off the event loop): the step graph's session, checked and warm;
    None when the model has no step graph; ModelLoadError naming step.onnx otherwise."""
    if spec.step is None:
        return None
    view = step_view(spec)
    max_batch = config.max_batch_size
    try:
        session = open_session(
            view, config.device_policy, settings.intra_op_threads, (1, min(8, max_batch), max_batch)
        )
        if settings.verify_goldens:
            check_goldens(view, session)
        warm_up(view, session, (1, max_batch))
    except ModelLoadError as exc:
        raise ModelLoadError(f"step graph {spec.step.onnx_file.name}: {exc}") from exc
    return session


class Stepper:
    """Scores one event of one session; concurrent calls are batched across sessions."""

    def __init__(self, spec: StepSpec, session: ModelSession, batcher: Batcher) -> None:
        self.spec = spec
        self.session = session
        self.batcher = batcher
        shapes = {t.name: t.shape[1:] for t in spec.inputs}
        self._initial = {
            s.input: np.full((1, *shapes[s.input]), s.initial, dtype=np.float32) for s in spec.state
        }

    def initial_state(self) -> State:
        return {name: value.copy() for name, value in self._initial.items()}

    async def step(
        self, token: int, state: State, deadline: float | None
    ) -> tuple[float, np.ndarray, State]:
        """(the event's score, the sequence scores so far, the next state)."""
        spec = self.spec
        feeds = {spec.token_input: np.array([token], dtype=np.int64), **state}
        self.batcher.enter()
        try:
            out = await self.batcher.infer(feeds, 1, deadline)
        finally:
            self.batcher.leave()
        # Copies: a view would keep the whole batch's output arrays alive per session.
        following = {s.input: np.array(out[s.output]) for s in spec.state}
        scores = np.array(out[spec.sequence_scores_output][0])
        return float(out[spec.position_score_output][0]), scores, following


def build_stepper(
    spec: ModelSpec,
    config: ServingConfig,
    session: ModelSession,
    threads: InferenceThreads,
    metrics: Metrics,
    max_in_flight: int,
) -> Stepper:
    assert spec.step is not None
    batcher = Batcher(
        f"{spec.name}/{spec.version} step",
        session,
        BatchLayout({}, frozenset()),  # no sequence axis: rows just stack
        threads,
        metrics.for_step(spec.name, spec.version, session.providers),
        config,
        max_in_flight=max_in_flight,
    )
    return Stepper(spec.step, session, batcher)
