"""The server's core: the loaded models and the lookups the protocol needs.

Plain Python, no gRPC: the servicer translates between this and the wire.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from bnserve.server.bn_guard import check_inference_batchnorm
from bnserve.server.errors import ModelLoadError, ModelNotFoundError, ModelNotReadyError
from bnserve.server.model import ServedModel
from bnserve.server.repository import ModelVersion, latest_versions
from bnserve.server.runtime import OnnxRuntimeSession
from bnserve.server.settings import ServerSettings

log = logging.getLogger(__name__)


def load_model(entry: ModelVersion, settings: ServerSettings, observer=None) -> ServedModel:
    """Load one model version, or raise ModelLoadError saying why it must not be served."""
    try:
        problems = check_inference_batchnorm(entry.model_path)
    except Exception as exc:  # onnx raises protobuf DecodeError and friends for a bad file
        raise ModelLoadError(f"{entry.model_path.name} is not a readable ONNX model ({exc})") from exc
    if problems:
        raise ModelLoadError(
            f"{problems[0]}: its outputs would depend on the other requests in a batch "
            "(export the model in eval mode with frozen running statistics)"
        )
    session = OnnxRuntimeSession(
        entry.model_path, device=settings.device, intra_op_threads=settings.intra_op_threads
    )
    return ServedModel(
        entry,
        session,
        max_batch_size=settings.max_batch_size,
        max_queue_delay_s=settings.max_queue_delay_ms / 1000.0,
        max_queue_size=settings.max_queue_size,
        observer=observer,
    )


class ModelManager:
    """Loads every model of a repository (highest version) and finds them for requests."""

    def __init__(self, settings: ServerSettings, *, observer: Callable | None = None) -> None:
        self._settings = settings
        self._observer = observer
        self._models: dict[str, ServedModel] = {}
        self.refused: dict[str, str] = {}  # model name -> why it is not served
        self.accepting = False

    def load_all(self) -> None:
        for entry in latest_versions(self._settings.repository):
            try:
                model = load_model(entry, self._settings, self._observer)
            except ModelLoadError as exc:
                self.refused[entry.name] = str(exc)
                log.error("refusing to load model %r version %d: %s", entry.name, entry.version, exc)
                continue
            self._models[entry.name] = model
            log.info("loaded %s", model.describe())
        if not self._models:
            log.warning("no model loaded from %s", self._settings.repository)

    def start(self) -> None:
        for model in self._models.values():
            model.start()
        self.accepting = True

    @property
    def ready(self) -> bool:
        """Accepting requests, with at least one model; with strict readiness (the default),
        also no model refused, so a broken deployment never looks healthy to a probe."""
        if not self.accepting or not self._models:
            return False
        return not (self._settings.strict_readiness and self.refused)

    async def stop(self) -> None:
        self.accepting = False
        for model in self._models.values():
            await model.stop()

    @property
    def models(self) -> dict[str, ServedModel]:
        return dict(self._models)

    def get(self, name: str, version: str = "") -> ServedModel:
        model = self._models.get(name)
        if model is None:
            if name in self.refused:
                raise ModelNotFoundError(f"model {name!r} is not served: {self.refused[name]}")
            known = ", ".join(sorted(self._models)) or "none"
            raise ModelNotFoundError(f"unknown model {name!r}; served models: {known}")
        if version and version != model.version:
            raise ModelNotFoundError(
                f"model {name!r} has no version {version!r} loaded; served version: {model.version}"
            )
        if not self.accepting:
            raise ModelNotReadyError(f"model {name!r} is not accepting requests (shutting down)")
        return model

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.get(name, version)
        except (ModelNotFoundError, ModelNotReadyError):
            return False
        return True
