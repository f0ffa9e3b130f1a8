"""The ``bnserve.v1.BatchNormMonitor`` servicer: parsed requests in, monitor data out.

Like the inference servicer it is a thin translation layer: ``bnserve.server.transport``
parses the bytes and maps errors to statuses; here a request is checked, its model found in
the registry, and what the version's monitor or capture holds (``ServedModel.monitoring``)
encoded by ``bnserve.server.monitor_wire``. Who may call what:

    DriftReport     anyone who may infer (an inference token when the server has
                    --auth-token-file; the interceptor checks it)
    CapturedInputs  the admin token (AdminGuard, as the repository API)
    Recalibrate     the admin token; ``recalibrate`` is the hook that does the work, and
                    without one the call is answered UNIMPLEMENTED
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bnserve.proto import monitor_pb2 as mpb
from bnserve.repository.layout import parse_version
from bnserve.server.admin import AdminGuard
from bnserve.server.errors import InvalidInputError, PreconditionError, UnimplementedError, quoted
from bnserve.server.model import ServedModel
from bnserve.server.monitor_wire import (
    captured_inputs_response,
    drift_report_response,
    rows_that_fit,
)
from bnserve.server.recalibration import (
    DEFAULT_INPUT_STATISTICS,
    DEFAULT_PRIOR_STRENGTH,
    MAX_PRIOR_STRENGTH,
)
from bnserve.server.registry import ModelRegistry
from bnserve.server.repository import check_model_name

CAPTURE_API = "CapturedInputs"
RECALIBRATE_API = "Recalibrate"


@dataclass(frozen=True)
class RecalibrationRequest:
    """A checked RecalibrateRequest, for the ``recalibrate`` hook."""

    max_rows: int  # captured rows to use; 0 = all
    prior_strength: float  # >= 0, finite
    input_statistics: bool


@dataclass(frozen=True)
class RecalibrationResult:
    base_version: int
    new_version: int
    samples: int
    drift_before: float
    drift_after: float
    threshold: float
    serving: bool
    message: str = ""


# The recalibration loop: the served version (its monitor and capture in .monitoring) and
# the checked request in, the published result out. Raise ServingError subclasses to refuse.
Recalibrate = Callable[[ServedModel, RecalibrationRequest], Awaitable[RecalibrationResult]]


class BatchNormMonitorServicer:
    def __init__(self, registry: ModelRegistry, admin: AdminGuard, *, max_send_bytes: int,
                 recalibrate: Recalibrate | None = None) -> None:
        self._registry = registry
        self._admin = admin
        self._max_send_bytes = max_send_bytes
        self._recalibrate = recalibrate

    def _model(self, name: str, version: str) -> ServedModel:
        if not name:
            raise InvalidInputError("model_name: expected the name of a served model")
        check_model_name(name)
        if version and parse_version(version) is None:
            raise InvalidInputError(f"model_version: expected a version number or \"\" (the "
                                    f"highest ready), got {quoted(version)}")
        return self._registry.resolve(name, version)

    async def DriftReport(self, request, context):
        model = self._model(request.model_name, request.model_version)
        monitor = model.monitoring.monitor
        if monitor is None:
            raise PreconditionError(f"model {model.name!r} version {model.version} has no drift "
                                    f"monitor: {model.monitoring.drift_problem}")
        return drift_report_response(model.name, model.version, monitor.report(),
                                     include_channels=request.include_channels,
                                     max_bytes=self._max_send_bytes)

    async def CapturedInputs(self, request, context):
        self._admin.check(context.invocation_metadata(), api=CAPTURE_API)
        model = self._model(request.model_name, request.model_version)
        capture = model.monitoring.capture
        if capture is None:
            why = ("start the server with --capture-rows N" if model.batchable
                   else "the model has no batch axis")
            raise PreconditionError(f"input capture is off for model {model.name!r} version "
                                    f"{model.version}: {why}")
        rows = capture.snapshot(request.max_rows or None)
        fit = rows_that_fit(rows, self._max_send_bytes)
        held = next(iter(rows.values())).shape[0] if rows else 0
        if fit < held:  # the most recent rows that fit the send limit
            rows = {name: array[held - fit:] for name, array in rows.items()}
        return captured_inputs_response(model.name, model.version, rows, capture.rows_seen)

    async def Recalibrate(self, request, context):
        self._admin.check(context.invocation_metadata(), api=RECALIBRATE_API)
        if self._recalibrate is None:
            raise UnimplementedError("Recalibrate is not implemented by this server yet")
        model = self._model(request.model_name, request.model_version)
        prior = (request.prior_strength if request.HasField("prior_strength")
                 else DEFAULT_PRIOR_STRENGTH)
        if not (math.isfinite(prior) and 0 <= prior <= MAX_PRIOR_STRENGTH):
            raise InvalidInputError(f"prior_strength: expected a number from 0 to "
                                    f"{MAX_PRIOR_STRENGTH:g} (rows of weight for the base "
                                    "version's statistics)")
        refit_inputs = (request.input_statistics if request.HasField("input_statistics")
                        else DEFAULT_INPUT_STATISTICS)
        result = await self._recalibrate(model, RecalibrationRequest(
            request.max_rows, prior, refit_inputs))
        return mpb.RecalibrateResponse(
            model_name=model.name, base_version=str(result.base_version),
            new_version=str(result.new_version), samples=result.samples,
            drift_before=result.drift_before, drift_after=result.drift_after,
            threshold=result.threshold, serving=result.serving, message=result.message)
