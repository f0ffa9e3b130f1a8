"""The model lifecycle: from folders on disk to versions serving traffic, and back out.

    --model-control-mode none      load every model at start; the repository is then fixed
    --model-control-mode poll      also re-read the repository every --repository-poll-secs
    --model-control-mode explicit  load only --load-model NAMEs at start; then what the
                                   repository API asks (RepositoryModelLoad / Unload)

One model is brought in line with the disk by ``sync(name)``:

    snapshot (config text, version folders + file fingerprints)
      --> ModelSettings (config.pbtxt or the server's defaults)
      --> versions the version_policy selects (in poll mode: only versions whose files
          looked the same at the previous poll: a folder still being copied is not loaded)
      --> load each selected version that is not serving yet (or whose files or config
          changed) in a worker thread: checks, batch-independence proof, warm-up
      --> swap: the new version is READY before anything it replaces stops; a replaced
          version drains (finishes its queued and running requests) and is released
      --> a selected version that failed to load keeps an older ready version serving in
          its place (one per failure), so a broken new version never takes the model down

The controller writes the registry; everything else reads it. Operations on one model are
serialized by a lock per model; different models do not wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

from bnserve.server.errors import (
    ConfigError,
    InvalidInputError,
    ModelLoadError,
    ModelNotFoundError,
    PreconditionError,
)
from bnserve.server.loader import load_version
from bnserve.server.model import ServedModel
from bnserve.server.model_config import ModelSettings, settings_from_json, settings_from_text
from bnserve.server.registry import IndexRow, ModelRegistry, State
from bnserve.server.repository import ModelRepository, ModelSnapshot, VersionOnDisk
from bnserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

Loader = Callable[[str, VersionOnDisk, ModelSettings, ServerSettings, Callable | None], ServedModel]


@dataclass(frozen=True)
class _Failure:
    """A version that failed to load, and what it looked like then: retried only on change."""

    fingerprint: tuple
    digest: str
    reason: str


class RepositoryController:
    def __init__(self, repository: ModelRepository, registry: ModelRegistry,
                 settings: ServerSettings, *, loader: Loader = load_version,
                 observer: Callable | None = None) -> None:
        self.repository = repository
        self.registry = registry
        self.settings = settings
        self.mode = settings.model_control_mode
        self._loader = loader
        self._observer = observer
        self._locks: dict[str, asyncio.Lock] = {}
        self._previous_poll: dict[str, ModelSnapshot] = {}  # what the last poll saw
        self._failures: dict[tuple[str, int], _Failure] = {}
        self._overrides: dict[str, str] = {}  # explicit mode: a load request's config JSON
        self._retiring: set[asyncio.Task[None]] = set()
        self._kept: dict[str, tuple] = {}  # model -> (kept versions, failed ones) last logged
        self._poller: asyncio.Task[None] | None = None

    # -- life of the controller ------------------------------------------------------------------

    async def start(self) -> None:
        """Load what the mode says to load at start; in poll mode, start polling."""
        self.repository.check_root()
        if self.mode == "explicit":
            for name in self.settings.load_model:
                try:
                    await self.load(name)
                except (ModelNotFoundError, PreconditionError) as exc:
                    log.error("--load-model %r: %s", name, exc)
                    self.registry.set_model(name, wanted=True, reason=str(exc))
        else:
            names = self.repository.models()
            for name in names:
                await self.sync(name)
            if not names:
                log.warning("no model folder in %s", self.repository.root)
        if self.mode == "poll":
            self._remember_disk()
            self._poller = asyncio.get_running_loop().create_task(self._poll_forever(),
                                                                  name="repository-poller")

    async def stop(self) -> None:
        """Stop polling and every model at once (requests still queued get UNAVAILABLE)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        models = self.registry.served()
        for model in models:
            await model.stop()
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)

    async def wait_retired(self) -> None:
        """Until every replaced version has drained (tests and shutdown use it)."""
        while self._retiring:
            await asyncio.gather(*list(self._retiring), return_exceptions=True)

    # -- polling ---------------------------------------------------------------------------------

    async def _poll_forever(self) -> None:
        while True:
            await asyncio.sleep(self.settings.repository_poll_secs)
            try:
                await self.poll_once()
            except Exception:  # a bad poll must not end polling
                log.exception("repository poll failed")

    async def poll_once(self) -> None:
        """Bring every model in line with the disk, loading only what did not change since
        the previous poll (the stability rule)."""
        on_disk = await asyncio.to_thread(self.repository.models)
        for name in sorted(set(on_disk) | set(self.registry.names())):
            await self.sync(name, settled_only=True)

    def _remember_disk(self) -> None:
        for name in self.repository.models():
            with contextlib.suppress(Exception):
                self._previous_poll[name] = self.repository.snapshot(name)

    # -- explicit control ------------------------------------------------------------------------

    def _require_explicit(self, what: str) -> None:
        if self.mode != "explicit":
            raise PreconditionError(f"{what} needs --model-control-mode explicit (this server "
                                    f"runs in {self.mode} mode)")

    async def load(self, name: str, config_json: str | None = None) -> None:
        """Load (or reload) ``name`` from the repository; PreconditionError if nothing serves."""
        self._require_explicit("loading a model")
        self.repository.model_dir(name)  # checks the name first, then NOT_FOUND
        if config_json is not None:
            try:
                settings_from_json(config_json, name, self.settings)  # refuse before any work
            except ConfigError as exc:  # the caller's parameter, not the repository's file
                raise InvalidInputError(str(exc)) from None
            self._overrides[name] = config_json
        else:
            self._overrides.pop(name, None)
        self.registry.set_model(name, wanted=True)
        for key in [k for k in self._failures if k[0] == name]:
            del self._failures[key]  # an explicit load always retries
        await self.sync(name)
        if not self.registry.ready_versions(name):
            raise PreconditionError(f"model {name!r} failed to load: "
                                    f"{self.registry.why_not_ready(name)}")

    async def unload(self, name: str) -> None:
        """Stop serving every version of ``name`` once its requests are answered."""
        self._require_explicit("unloading a model")
        if self.registry.entry(name) is None:
            self.repository.model_dir(name)  # checks the name first, then NOT_FOUND
        async with self._lock(name):
            self.registry.set_model(name, wanted=False, reason="")
            entry = self.registry.entry(name)
            for version in list(entry.versions if entry else ()):
                found = self.registry.version_entry(name, version)
                if found is not None and found.model is not None:
                    self._retire(name, version, found.model, replaced=False,
                                 reason="was unloaded")
                elif found is not None:
                    self.registry.set_version(name, version, State.UNAVAILABLE,
                                              reason="was unloaded")
        await self.wait_retired()

    # -- the index -------------------------------------------------------------------------------

    def index(self) -> list[IndexRow]:
        """The registry's rows, and a row for each model on disk the server has not loaded."""
        rows = self.registry.index()
        known = set(self.registry.names())
        why = ("not loaded (load it with RepositoryModelLoad)" if self.mode == "explicit"
               else f"not loaded (appeared after the start; model control mode {self.mode})")
        for name in self.repository.models():
            if name not in known:
                rows.append(IndexRow(name, "", State.UNAVAILABLE, why))
        return sorted(rows, key=lambda r: (r.name, int(r.version or 0)))

    # -- bringing one model in line with the disk ------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    async def sync(self, name: str, *, settled_only: bool = False) -> None:
        async with self._lock(name):
            await self._sync(name, settled_only)

    async def _sync(self, name: str, settled_only: bool) -> None:
        try:
            snapshot = await asyncio.to_thread(self.repository.snapshot, name)
        except ModelNotFoundError:
            snapshot = None
        previous = self._previous_poll.get(name)
        if settled_only:
            if snapshot is None:
                self._previous_poll.pop(name, None)
            else:
                self._previous_poll[name] = snapshot
        if snapshot is None:  # the model folder is gone: stop serving it
            self._retire_all(name, reason="was removed from the repository")
            return
        entry = self.registry.entry(name)
        if self.mode == "explicit" and (entry is None or not entry.wanted):
            return  # on disk but not asked for
        if snapshot.problem:
            self.registry.set_model(name, wanted=True, reason=self._held(name, snapshot.problem))
            return
        override = self._overrides.get(name)
        if settled_only and previous is not None and previous.config_text != snapshot.config_text:
            return  # config.pbtxt changed since the last poll: wait until it stops changing
        try:
            if override is not None:
                settings = settings_from_json(override, name, self.settings)
            else:
                settings = settings_from_text(snapshot.config_text, name, self.settings)
        except ConfigError as exc:
            log.error("model %r: %s", name, exc)
            self.registry.set_model(name, wanted=True, reason=self._held(name, str(exc)))
            return
        self.registry.set_model(name, wanted=True, reason="")

        if not settled_only:
            settled = dict(snapshot.versions)
        elif previous is None:  # a model that just appeared: wait for a second look
            settled = {}
        else:
            settled = {v: e for v, e in snapshot.versions.items() if previous.versions.get(v) == e}
        # A serving version whose files are changing keeps serving as it is until they settle.
        candidates = set(settled) | {v for v in snapshot.versions if self._serving(name, v)}
        selected = settings.version_policy.select(candidates)
        for version in selected:
            if version in settled:
                await self._bring_up(name, settled[version], settings)

        # Versions leave only once what replaces them is up; a selected version that failed
        # keeps one older ready version serving in its place.
        failed = [v for v in selected if self._serving(name, v) is None]
        stale = sorted((v for v in self.registry.ready_versions(name) if v not in selected),
                       reverse=True)
        keep = [v for v in stale if v in snapshot.versions][:len(failed)]
        for version in stale:
            if version not in keep:
                model = self._serving(name, version)
                reason = ("is not selected by the version policy "
                          f"({settings.version_policy.describe()})"
                          if version in snapshot.versions else "was removed from the repository")
                self._retire(name, version, model, replaced=False, reason=reason,
                             drop=version not in snapshot.versions)
        if keep and self._kept.get(name) != (tuple(keep), tuple(failed)):  # once, not every poll
            log.warning("model %r: keeping version(s) %s serving while %s", name,
                        ", ".join(map(str, keep)),
                        ", ".join(f"version {v} failed to load" for v in failed))
        self._kept[name] = (tuple(keep), tuple(failed))
        self._describe_idle_versions(name, snapshot, settled, selected, settings)

    async def _bring_up(self, name: str, entry: VersionOnDisk, settings: ModelSettings) -> None:
        """Load ``entry`` unless the same files with the same settings already serve (or failed)."""
        version = entry.version
        current = self._serving(name, version)
        if current is not None and current.fingerprint == entry.fingerprint \
                and current.settings.digest == settings.digest:
            return
        failure = self._failures.get((name, version))
        if failure and failure.fingerprint == entry.fingerprint and failure.digest == settings.digest:
            return  # the same files failed the same way before: wait for a change
        if current is None:
            self.registry.set_version(name, version, State.LOADING)
        log.info("loading model %r version %d (%s)", name, version, settings.source)
        try:
            model = await asyncio.to_thread(self._loader, name, entry, settings, self.settings,
                                            self._observer)
        except ModelLoadError as exc:
            self._failures[(name, version)] = _Failure(entry.fingerprint, settings.digest, exc.reason)
            log.error("model %r version %d failed to load: %s", name, version, exc.detail)
            if current is None:
                self.registry.set_version(name, version, State.UNAVAILABLE,
                                          reason=f"failed to load: {exc.reason}")
            else:  # a reload failed: the loaded one keeps serving
                self.registry.set_version(name, version, State.READY, model=current,
                                          reason=f"serving the previous load; reloading failed: "
                                          f"{exc.reason}")
            return
        except Exception:  # a loader bug: never leave the version LOADING forever
            log.exception("model %r version %d: unexpected error while loading", name, version)
            if current is None:
                self.registry.set_version(name, version, State.UNAVAILABLE,
                                          reason="failed to load: internal error (see the log)")
            return
        self._failures.pop((name, version), None)
        model.start()
        self.registry.set_version(name, version, State.READY, model=model)
        log.info("loaded %s", model.describe())
        if current is not None:
            self._retire(name, version, current, replaced=True)

    def _describe_idle_versions(self, name: str, snapshot: ModelSnapshot,
                                settled: dict[int, VersionOnDisk], selected: list[int],
                                settings: ModelSettings) -> None:
        """Index rows for versions on disk that do not serve, and none for those gone."""
        for version in snapshot.versions:
            found = self.registry.version_entry(name, version)
            if found is not None and found.state in (State.READY, State.UNLOADING):
                continue
            if version not in settled:
                self.registry.set_version(name, version, State.UNAVAILABLE,
                                          reason="is being written (loaded once its files stop "
                                          "changing between two polls)")
            elif version not in selected:
                self.registry.set_version(
                    name, version, State.UNAVAILABLE,
                    reason=f"is not selected by the version policy "
                    f"({settings.version_policy.describe()})")
        policy = settings.version_policy
        missing = ({v for v in policy.versions if v not in snapshot.versions}
                   if policy.kind == "specific" else set())
        entry = self.registry.entry(name)
        for version in list(entry.versions if entry else ()):
            found = entry.versions[version]
            if version not in snapshot.versions and found.model is None and version not in missing:
                self.registry.drop_version(name, version)
        for version in missing:
            self.registry.set_version(name, version, State.UNAVAILABLE,
                                      reason="is named by the version policy but is not in the "
                                      "repository")

    def _serving(self, name: str, version: int) -> ServedModel | None:
        found = self.registry.version_entry(name, version)
        return found.model if found is not None and found.state is State.READY else None

    def _held(self, name: str, problem: str) -> str:
        """A model-level problem, and whether older versions keep serving through it."""
        if self.registry.ready_versions(name):
            return f"{problem} (the loaded versions keep serving)"
        return problem

    # -- taking versions out of service ----------------------------------------------------------

    def _retire_all(self, name: str, reason: str) -> None:
        entry = self.registry.entry(name)
        if entry is None:
            return
        for version, found in list(entry.versions.items()):
            if found.model is None:
                self.registry.drop_version(name, version)
            elif found.state is State.READY:
                self._retire(name, version, found.model, replaced=False, reason=reason,
                             drop=True)
        if not entry.versions:
            self.registry.drop_model(name)

    def _retire(self, name: str, version: int, model: ServedModel | None, *, replaced: bool,
                reason: str = "", drop: bool = False) -> None:
        """Drain ``model`` in the background. ``replaced``: a newer load of the same version
        already serves; else the version shows UNLOADING, then UNAVAILABLE (``reason``)."""
        if model is None:
            return
        if not replaced:
            self.registry.set_version(name, version, State.UNLOADING, model=model)

        async def drain() -> None:
            try:
                await model.drain()
            finally:
                if not replaced:
                    found = self.registry.version_entry(name, version)
                    if found is not None and found.model is model:
                        if drop:
                            self.registry.drop_version(name, version)
                            entry = self.registry.entry(name)
                            if entry is not None and not entry.versions:
                                self.registry.drop_model(name)
                        else:
                            self.registry.set_version(name, version, State.UNAVAILABLE,
                                                      reason=reason)
                log.info("model %r version %d %s", name, version,
                         "replaced by a new load" if replaced else reason)

        task = asyncio.get_running_loop().create_task(drain(), name=f"drain:{name}/{version}")
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)
