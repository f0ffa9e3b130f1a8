"""The model lifecycle, driven through the controller and registry without gRPC: versions
and policies, the stability rule for folders being copied, failed loads that keep the
previous version serving, drains, config changes, explicit control."""

from __future__ import annotations

import asyncio
import shutil
import threading

import numpy as np
import pytest

from bnserve.server.errors import InvalidInputError, ModelNotFoundError, PreconditionError
from bnserve.server.loader import load_version
from bnserve.server.registry import State
from support import onnx_graphs
from support.lifecycle import lifecycle

POLL = {"model_control_mode": "poll", "repository_poll_secs": 3600}  # polls driven by hand
X = np.ones((1, 2), np.float32)


class CountingLoader:
    """The real loader, recording each (model, version, size of model.onnx) it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, name, entry, settings, server, observer=None):
        size = (entry.directory / "model.onnx").stat().st_size
        self.calls.append((name, entry.version, size))
        return load_version(name, entry, settings, server, observer)


async def answer(registry, version: str = "") -> float:
    """What model "m" answers for a row of ones: its version's scale factor."""
    model = registry.resolve("m", version)
    return float((await model.infer({"x": X}))["y"][0, 0])


def states(registry, name="m") -> dict[int, State]:
    entry = registry.entry(name)
    return {v: e.state for v, e in entry.versions.items()} if entry else {}


async def test_a_new_version_loads_once_its_files_settle_and_replaces_the_old(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    async with lifecycle(tmp_path, **POLL) as (controller, registry):
        assert await answer(registry) == 1.0
        onnx_graphs.scaled(tmp_path / "m" / "2" / "model.onnx", 2.0)
        await controller.poll_once()  # first sight of version 2: not loaded yet
        assert registry.ready_versions("m") == [1]
        assert "being written" in registry.version_entry("m", 2).reason
        await controller.poll_once()  # unchanged since: loaded, then version 1 drains
        assert registry.ready_versions("m") == [2]
        assert await answer(registry) == 2.0
        await controller.wait_retired()
        v1 = registry.version_entry("m", 1)
        assert v1.state is State.UNAVAILABLE and v1.reason.startswith("is not selected by the "
                                                                      "version policy (latest 1)")
        with pytest.raises(Exception, match="version 1 is not selected"):
            registry.resolve("m", "1")


async def test_a_version_copied_slowly_in_chunks_is_loaded_only_when_whole(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    whole = onnx_graphs.scaled(tmp_path / "source" / "model.onnx", 2.0).read_bytes()
    shutil.rmtree(tmp_path / "source")
    loader = CountingLoader()
    async with lifecycle(tmp_path, loader=loader, **POLL) as (controller, registry):
        target = tmp_path / "m" / "2" / "model.onnx"
        target.parent.mkdir()
        chunk = max(1, len(whole) // 5)
        with open(target, "wb") as out:
            for start in range(0, len(whole), chunk):
                out.write(whole[start:start + chunk])
                out.flush()
                await controller.poll_once()  # a poll between every two chunks
                assert registry.ready_versions("m") == [1] and await answer(registry) == 1.0
        assert [c for c in loader.calls if c[1] == 2] == []  # never tried half a file
        await controller.poll_once()
        await controller.poll_once()
        assert registry.ready_versions("m") == [2] and await answer(registry) == 2.0
        assert [c for c in loader.calls if c[1] == 2] == [("m", 2, len(whole))]


async def test_a_broken_new_version_keeps_the_previous_one_serving(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    loader = CountingLoader()
    async with lifecycle(tmp_path, loader=loader, **POLL) as (controller, registry):
        (tmp_path / "m" / "2").mkdir()
        (tmp_path / "m" / "2" / "model.onnx").write_bytes(b"half an upload")
        for _ in range(3):
            await controller.poll_once()
        assert states(registry) == {1: State.READY, 2: State.UNAVAILABLE}
        assert registry.version_entry("m", 2).reason == (
            "failed to load: model.onnx is not a valid ONNX model")
        assert await answer(registry) == 1.0 and registry.ready
        assert len([c for c in loader.calls if c[1] == 2]) == 1  # not retried while unchanged
        onnx_graphs.scaled(tmp_path / "m" / "2" / "model.onnx", 2.0)  # the fix lands
        await controller.poll_once()
        await controller.poll_once()
        assert registry.ready_versions("m") == [2] and await answer(registry) == 2.0


async def test_removing_the_served_version_brings_the_previous_one_back(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    onnx_graphs.scaled(tmp_path / "m" / "2" / "model.onnx", 2.0)
    async with lifecycle(tmp_path, **POLL) as (controller, registry):
        assert registry.ready_versions("m") == [2]
        shutil.rmtree(tmp_path / "m" / "2")
        await controller.poll_once()
        assert registry.ready_versions("m") == [1] and await answer(registry) == 1.0
        await controller.wait_retired()
        assert states(registry) == {1: State.READY}  # a version gone from disk leaves the index


async def test_a_changed_config_reloads_the_model_with_it(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    onnx_graphs.scaled(tmp_path / "m" / "2" / "model.onnx", 2.0)
    async with lifecycle(tmp_path, **POLL) as (controller, registry):
        first = registry.resolve("m")
        assert first.settings.source == "server defaults" and first.max_batch_size == 64
        (tmp_path / "m" / "config.pbtxt").write_text(
            'max_batch_size: 4\ndynamic_batching { }\nversion_policy { all { } }\n')
        await controller.poll_once()  # changed since the last poll: wait for it to settle
        assert registry.ready_versions("m") == [2]
        await controller.poll_once()
        assert registry.ready_versions("m") == [1, 2]
        reloaded = registry.resolve("m")
        assert reloaded is not first and reloaded.max_batch_size == 4
        assert reloaded.settings.source == "config.pbtxt"
        assert await answer(registry, "1") == 1.0 and await answer(registry, "2") == 2.0
        (tmp_path / "m" / "config.pbtxt").write_text('max_batch_size: "many"\n')  # a bad edit
        await controller.poll_once()
        await controller.poll_once()
        assert registry.ready_versions("m") == [1, 2]  # the loaded versions keep serving
        assert "keep serving" in registry.entry("m").reason


async def test_new_and_removed_models_come_and_go(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    async with lifecycle(tmp_path, **POLL) as (controller, registry):
        onnx_graphs.scaled(tmp_path / "new" / "1" / "model.onnx", 3.0)
        await controller.poll_once()
        assert registry.ready_versions("new") == []
        await controller.poll_once()
        assert registry.ready_versions("new") == [1]
        shutil.rmtree(tmp_path / "m")
        await controller.poll_once()
        await controller.wait_retired()
        assert registry.names() == ["new"]
        with pytest.raises(ModelNotFoundError):
            registry.resolve("m")


async def test_version_policies_select_what_serves(tmp_path):
    for version in (1, 2, 3):
        onnx_graphs.scaled(tmp_path / "m" / str(version) / "model.onnx", float(version))
    config = tmp_path / "m" / "config.pbtxt"
    config.write_text("version_policy { specific { versions: [1, 3, 7] } }")
    async with lifecycle(tmp_path) as (_, registry):
        assert registry.ready_versions("m") == [1, 3]
        assert await answer(registry) == 3.0 and await answer(registry, "1") == 1.0
        assert "not selected" in registry.version_entry("m", 2).reason
        assert "not in the repository" in registry.version_entry("m", 7).reason
        with pytest.raises(Exception, match="has no version '9'"):
            registry.resolve("m", "9")
    config.write_text("version_policy { latest { num_versions: 2 } }")
    async with lifecycle(tmp_path) as (_, registry):
        assert registry.ready_versions("m") == [2, 3]


async def test_a_replaced_version_answers_its_queued_requests_before_it_goes(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    async with lifecycle(tmp_path, **POLL) as (controller, registry):
        old = registry.resolve("m")
        release = asyncio.Event()
        real_run = old.batcher._run_batch  # noqa: SLF001 - hold version 1's runs open
        loop = asyncio.get_running_loop()

        def held(feeds):
            asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)
            return real_run(feeds)

        old.batcher._run_batch = held  # noqa: SLF001
        waiting = [asyncio.ensure_future(old.infer({"x": X})) for _ in range(5)]
        await asyncio.sleep(0)  # each is queued at its first step
        onnx_graphs.scaled(tmp_path / "m" / "2" / "model.onnx", 2.0)
        await controller.poll_once()
        await controller.poll_once()
        assert await answer(registry) == 2.0  # new requests already go to version 2
        assert states(registry)[1] is State.UNLOADING
        release.set()
        answers = await asyncio.gather(*waiting)
        assert [float(a["y"][0, 0]) for a in answers] == [1.0] * 5  # none lost in the swap
        await controller.wait_retired()
        assert states(registry)[1] is State.UNAVAILABLE
        with pytest.raises(Exception, match="not accepting"):
            await old.infer({"x": X})


async def test_explicit_mode_loads_only_what_it_is_asked(tmp_path):
    onnx_graphs.scaled(tmp_path / "a" / "1" / "model.onnx", 1.0)
    onnx_graphs.scaled(tmp_path / "b" / "1" / "model.onnx", 2.0)
    (tmp_path / "broken" / "1").mkdir(parents=True)
    (tmp_path / "broken" / "1" / "model.onnx").write_bytes(b"junk")
    async with lifecycle(tmp_path, model_control_mode="explicit",
                         load_model=["a"]) as (controller, registry):
        assert registry.names() == ["a"] and registry.ready
        rows = {(r.name, r.version): (r.state.value, r.reason) for r in controller.index()}
        assert rows[("b", "")] == ("UNAVAILABLE", "not loaded (load it with RepositoryModelLoad)")
        await controller.load("b")
        assert registry.ready_versions("b") == [1]
        with pytest.raises(PreconditionError, match="'broken' failed to load: version 1 failed "
                                                    "to load: model.onnx is not a valid ONNX"):
            await controller.load("broken")
        assert not registry.ready  # strict: a model asked for does not serve
        await controller.unload("broken")
        assert registry.ready
        await controller.unload("a")
        assert registry.ready_versions("a") == []
        assert registry.version_entry("a", 1).reason == "was unloaded"
        with pytest.raises(ModelNotFoundError):
            await controller.load("nope")
        for bad in ("../a", "/etc", "a/b", ".hidden", "x\x00y", "tab\there", "n" * 256, ""):
            with pytest.raises(InvalidInputError):
                await controller.load(bad)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "broken"]


async def test_load_and_unload_are_refused_outside_explicit_mode(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    for mode in ("none", "poll"):
        async with lifecycle(tmp_path, model_control_mode=mode) as (controller, _):
            with pytest.raises(PreconditionError, match="needs --model-control-mode explicit"):
                await controller.load("m")
            with pytest.raises(PreconditionError):
                await controller.unload("m")


async def test_a_version_loads_off_the_event_loop_and_serves_only_once_warmed_up(tmp_path):
    onnx_graphs.scaled(tmp_path / "m" / "1" / "model.onnx", 1.0)
    entered, release = threading.Event(), threading.Event()

    def slow_loader(name, entry, settings, server, observer=None):
        if entry.version == 2:
            entered.set()
            release.wait(10)  # a big model: seconds in its worker thread
        return load_version(name, entry, settings, server, observer)

    async with lifecycle(tmp_path, loader=slow_loader, **POLL) as (controller, registry):
        onnx_graphs.scaled(tmp_path / "m" / "2" / "model.onnx", 2.0)
        await controller.poll_once()
        polling = asyncio.ensure_future(controller.poll_once())
        assert await asyncio.to_thread(entered.wait, 10)
        for _ in range(20):  # the loop keeps serving while version 2 loads
            assert await answer(registry) == 1.0
        assert states(registry) == {1: State.READY, 2: State.LOADING}
        assert not registry.is_ready("m", "2")
        release.set()
        await polling
        assert await answer(registry) == 2.0
