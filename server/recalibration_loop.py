"""The loop inside the server: drift seen -> recalibrate from captured traffic -> new version
serving -> drift gone (and the previous version still there to roll back to).

    Recalibrate RPC (admin token) or the automatic trigger
      --> the served version's captured rows (``--capture-rows``; the most recent ones)
      --> recalibrate_version_folder in a worker thread (onnxruntime only: re-estimated
          from the base version's statistics, refolded, verified, written as version N+1
          atomically with its lineage in the card)
      --> controller.sync(name): N+1 is loaded, proven batch-independent, warmed up and
          swapped in without a failed request; N drains, or keeps serving when the version
          policy keeps it (``latest { num_versions: 2 }``: rollback is a version number)

One recalibration per model at a time. ``AutoRecalibration`` (off by default) runs the same
loop when a version's alarm has held for ``auto_recalibrate_after_s`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from bnserve.server.controller import RepositoryController
from bnserve.server.errors import PreconditionError
from bnserve.server.model import ServedModel
from bnserve.server.monitor_servicer import RecalibrationRequest, RecalibrationResult
from bnserve.server.recalibration import recalibrate_version_folder
from bnserve.server.registry import ModelRegistry, State

log = logging.getLogger(__name__)

# Fewer captured rows than this re-estimate a per-channel variance from too little (the
# report measures n = 8 as the smallest useful sample, with the prior's help).
MIN_ROWS = 8


class InServerRecalibration:
    """The ``recalibrate`` hook of the BatchNormMonitor servicer."""

    def __init__(self, repository: Path, registry: ModelRegistry,
                 controller: RepositoryController) -> None:
        self._repository = repository
        self._registry = registry
        self._controller = controller
        self._running: set[str] = set()  # models being recalibrated

    def running(self, name: str) -> bool:
        return name in self._running

    async def __call__(self, model: ServedModel, request: RecalibrationRequest
                       ) -> RecalibrationResult:
        capture = model.monitoring.capture
        if capture is None:
            raise PreconditionError(f"model {model.name!r} version {model.version} keeps no "
                                    "captured inputs to recalibrate from: start the server "
                                    "with --capture-rows N")
        rows = capture.snapshot(request.max_rows or None)
        held = next(iter(rows.values())).shape[0] if rows else 0
        if held < MIN_ROWS:
            raise PreconditionError(f"model {model.name!r} version {model.version} has "
                                    f"{held} captured rows; recalibration needs at least "
                                    f"{MIN_ROWS} (send traffic, or wait for the capture)")
        if model.name in self._running:
            raise PreconditionError(f"model {model.name!r} is already being recalibrated")
        self._running.add(model.name)
        try:
            outcome = await asyncio.to_thread(
                recalibrate_version_folder, self._repository, model.name, rows,
                version=model.version_number, prior_strength=request.prior_strength,
                input_statistics=request.input_statistics,
                source=f"the server's capture of version {model.version}")
            # Loaded, checked, warmed and swapped through the lifecycle, as any new version.
            await self._controller.sync(model.name)
        finally:
            self._running.discard(model.name)
        found = self._registry.version_entry(model.name, outcome.version)
        serving = found is not None and found.state is State.READY
        record = outcome.record
        if serving:
            kept = [v for v in self._registry.ready_versions(model.name) if v != outcome.version]
            message = (f"version {outcome.version} serves"
                       + (f"; version(s) {', '.join(map(str, kept))} still serve" if kept else
                          f"; version {outcome.base_version} and the others stay in the "
                          "repository for rollback"))
        else:
            message = (f"version {outcome.version} was published but does not serve: "
                       f"{self._registry.why_not_ready(model.name) or 'see the version policy'}")
        log.info("model %r: recalibrated from version %s on %d captured rows: %s", model.name,
                 model.version, held, message)
        drift = record.get("drift", {})
        threshold = drift.get("threshold_after") or drift.get("threshold") or 0.0
        return RecalibrationResult(
            base_version=outcome.base_version, new_version=outcome.version,
            samples=outcome.estimate.rows, drift_before=float(outcome.estimate.drift_before),
            drift_after=float(outcome.estimate.drift_after), threshold=float(threshold),
            serving=serving, message=message)


class AutoRecalibration:
    """Recalibrates a served version whose alarm has held ``after_s`` seconds (opt-in).

    Once tried, a model waits ``cooldown_s`` before the next try, whatever the outcome: a
    recalibration that did not bring the drift down must not loop.
    """

    def __init__(self, recalibrate: InServerRecalibration,
                 served: Callable[[], Iterable[ServedModel]], *, after_s: float,
                 cooldown_s: float, prior_strength: float, input_statistics: bool,
                 check_every_s: float = 1.0, clock: Callable[[], float] = time.time) -> None:
        self._recalibrate = recalibrate
        self._served = served
        self._after_s = after_s
        self._cooldown_s = cooldown_s
        self._request = RecalibrationRequest(0, prior_strength, input_statistics)
        self._check_every_s = check_every_s
        self._clock = clock
        self._last_try: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="auto-recalibrate")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._check_every_s)
            for model in self.due():
                self._last_try[model.name] = self._clock()
                try:
                    result = await self._recalibrate(model, self._request)
                    log.warning("model %r: drift alarm held %.0f s: recalibrated into version "
                                "%d (drift %.4f -> %.4f)", model.name, self._after_s,
                                result.new_version, result.drift_before, result.drift_after)
                except Exception as exc:  # one model's failure must not end the loop
                    log.warning("model %r: automatic recalibration failed: %s", model.name,
                                exc)

    def due(self) -> list[ServedModel]:
        """Served versions whose alarm has held long enough and whose model may try now."""
        now = self._clock()
        due: list[ServedModel] = []
        for model in self._served():
            if any(d.name == model.name for d in due):
                continue
            monitor, capture = model.monitoring.monitor, model.monitoring.capture
            if monitor is None or capture is None or self._recalibrate.running(model.name):
                continue
            since = monitor.alarm_since  # not report(): that copies every layer's moments
            if not since or now - since < self._after_s:
                continue
            if now - self._last_try.get(model.name, -float("inf")) < self._cooldown_s:
                continue
            due.append(model)
        return due
