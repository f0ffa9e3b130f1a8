"""The model registry: the one source of truth for which versions exist and which serve.

    (model, version) --> state: LOADING --> READY --> UNLOADING --> (UNAVAILABLE | gone)
                                      \\-> UNAVAILABLE (failed to load; the reason says why)

ServerReady, ModelReady, ModelMetadata's versions, the gRPC health statuses and the
repository index all read it; the controller (``bnserve.server.controller``) is the only
writer. Listeners are called after every change (the app republishes health from them).
Plain Python, no gRPC, no I/O.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field

from bnserve.repository.layout import parse_version
from bnserve.server.errors import ModelNotFoundError, ModelNotReadyError, quoted
from bnserve.server.model import ServedModel

MAX_LISTED = 10  # model names listed in a NOT_FOUND message


class State(str, enum.Enum):
    """Triton's model states, as RepositoryIndex reports them."""

    READY = "READY"
    LOADING = "LOADING"
    UNLOADING = "UNLOADING"
    UNAVAILABLE = "UNAVAILABLE"


@dataclass
class VersionEntry:
    state: State
    reason: str = ""
    model: ServedModel | None = None  # READY: serving; UNLOADING: draining


@dataclass
class ModelEntry:
    versions: dict[int, VersionEntry] = field(default_factory=dict)
    reason: str = ""  # a problem of the whole model (config, folder), "" when none
    wanted: bool = True  # the server means to serve it: readiness waits for it


@dataclass(frozen=True)
class IndexRow:
    name: str
    version: str  # "" for a row about the whole model
    state: State
    reason: str


class ModelRegistry:
    def __init__(self, *, strict_readiness: bool = True) -> None:
        self.strict_readiness = strict_readiness
        self._models: dict[str, ModelEntry] = {}
        self._listeners: list[Callable[[], None]] = []
        self._accepting = False
        self._draining = False
        # name -> its highest ready version: what a request without a version gets. Derived
        # from _models on every change (rare), so the request path is one dict lookup.
        self._latest: dict[str, ServedModel] = {}

    # -- writing (the controller) ------------------------------------------------------------

    def subscribe(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def _changed(self) -> None:
        self._latest = {}
        for name, entry in self._models.items():
            ready = [v for v, e in entry.versions.items() if e.state is State.READY]
            if ready:
                self._latest[name] = entry.versions[max(ready)].model  # type: ignore[assignment]
        for listener in self._listeners:
            listener()

    @property
    def accepting(self) -> bool:
        return self._accepting

    @accepting.setter
    def accepting(self, value: bool) -> None:
        self._accepting = value
        self._changed()

    @property
    def draining(self) -> bool:
        """Shutting down: requests are still answered, but the server reports neither live
        nor ready, so that load balancers move away before it stops accepting."""
        return self._draining

    @draining.setter
    def draining(self, value: bool) -> None:
        self._draining = value
        self._changed()

    @property
    def live(self) -> bool:
        return not self._draining

    def set_model(self, name: str, *, wanted: bool | None = None, reason: str | None = None) -> None:
        entry = self._models.get(name)
        before = None if entry is None else (entry.wanted, entry.reason)
        entry = self._models.setdefault(name, ModelEntry())
        if wanted is not None:
            entry.wanted = wanted
        if reason is not None:
            entry.reason = reason
        if before != (entry.wanted, entry.reason):
            self._changed()

    def set_version(self, name: str, version: int, state: State, *, reason: str = "",
                    model: ServedModel | None = None) -> None:
        versions = self._models.setdefault(name, ModelEntry()).versions
        new = VersionEntry(state, reason, model)
        if versions.get(version) != new:  # a poll that changes nothing notifies nobody
            versions[version] = new
            self._changed()

    def drop_version(self, name: str, version: int) -> None:
        entry = self._models.get(name)
        if entry is not None and entry.versions.pop(version, None) is not None:
            self._changed()

    def drop_model(self, name: str) -> None:
        if self._models.pop(name, None) is not None:
            self._changed()

    # -- reading -------------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._models)

    def entry(self, name: str) -> ModelEntry | None:
        return self._models.get(name)

    def version_entry(self, name: str, version: int) -> VersionEntry | None:
        entry = self._models.get(name)
        return None if entry is None else entry.versions.get(version)

    def ready_versions(self, name: str) -> list[int]:
        entry = self._models.get(name)
        if entry is None:
            return []
        return sorted(v for v, e in entry.versions.items() if e.state is State.READY)

    def served(self) -> list[ServedModel]:
        """Every model object that may still hold requests (READY or draining)."""
        return [e.model for m in self._models.values() for e in m.versions.values()
                if e.model is not None]

    @property
    def ready(self) -> bool:
        """Accepting, with at least one ready version; with strict readiness also every model
        the server means to serve has one, so a broken rollout never looks healthy."""
        if not self._accepting or self._draining:
            return False
        ready = {name for name in self._models if self.ready_versions(name)}
        if not ready:
            return False
        if self.strict_readiness:
            return all(name in ready for name, e in self._models.items() if e.wanted)
        return True

    def is_ready(self, name: str, version: str = "") -> bool:
        try:
            self.resolve(name, version)
        except (ModelNotFoundError, ModelNotReadyError):
            return False
        return True

    def resolve(self, name: str, version: str = "") -> ServedModel:
        """The model that answers a request for ``name`` / ``version`` ("" = highest ready)."""
        if not version and self._accepting:  # the hot path
            latest = self._latest.get(name)
            if latest is not None:
                return latest
        entry = self._models.get(name)
        if entry is None:
            known = [n for n in sorted(self._models) if self.ready_versions(n)]
            listed = ", ".join(known[:MAX_LISTED]) + (", ..." if len(known) > MAX_LISTED else "")
            raise ModelNotFoundError(f"unknown model {quoted(name, 128)}; served models: "
                                     f"{listed or 'none'}")
        if not self._accepting:
            raise ModelNotReadyError(f"model {name!r} is not accepting requests (the server is "
                                     "starting or shutting down)")
        if not version:
            latest = self._latest.get(name)
            if latest is not None:
                return latest
            raise ModelNotReadyError(f"model {name!r} is not ready: {self.why_not_ready(name)}")
        number = parse_version(version)
        found = entry.versions.get(number) if number is not None else None
        if found is None:
            ready = ", ".join(map(str, self.ready_versions(name))) or "none"
            raise ModelNotFoundError(f"model {name!r} has no version {quoted(version, 128)}; ready "
                                     f"versions: {ready}")
        if found.state is State.READY:
            return found.model  # type: ignore[return-value]
        raise ModelNotReadyError(f"model {name!r} version {number} {_describe(found)}")

    def why_not_ready(self, name: str) -> str:
        entry = self._models[name]
        if entry.reason:
            return entry.reason
        for version in sorted(entry.versions, reverse=True):
            found = entry.versions[version]
            if found.state is not State.UNAVAILABLE or found.reason:
                return f"version {version} {_describe(found)}"
        return "no version is loaded"

    def index(self) -> list[IndexRow]:
        rows = []
        for name in sorted(self._models):
            entry = self._models[name]
            if entry.reason or not entry.versions:
                state = State.READY if self.ready_versions(name) else State.UNAVAILABLE
                rows.append(IndexRow(name, "", state, entry.reason or "no version is loaded"))
            for version in sorted(entry.versions):
                found = entry.versions[version]
                rows.append(IndexRow(name, str(version), found.state, found.reason))
        return rows


def _describe(entry: VersionEntry) -> str:
    if entry.state is State.LOADING:
        return "is loading"
    if entry.state is State.UNLOADING:
        return "is unloading"
    if entry.state is State.READY:
        return "is ready"
    return entry.reason or "is not available"  # reasons read as predicates: "failed to load: ..."

