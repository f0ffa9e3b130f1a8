"""Per-model configuration: Triton's ``config.pbtxt`` read into plain ``ModelSettings``.

    MODEL/config.pbtxt --text_format.Parse--> inference.ModelConfig --> ModelSettings
    (no file)          -------- the server-wide settings -------------> ModelSettings

What a ``config.pbtxt`` may say and what bnserve does with it is ``HONOURED`` below (and
the README's table). Every other field that is set, whether our .proto declares it or not,
is named in ``ModelSettings.unhonoured`` and logged once when the model loads; fields that
would change what a model computes (``sequence_batching``, ``ensemble_scheduling``)
refuse the model instead. What a config.pbtxt leaves out is filled like Triton's
auto-complete fills it (``settings_from_config``): a file that only pins a version keeps
batching. Checks against the graph (names, datatypes, dims) happen at load, in
``bnserve.server.loader``.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from google.protobuf import json_format, text_format
from google.protobuf.message import Message

from bnserve.proto import model_config_pb2 as mc
from bnserve.proto.datatypes import BY_CONFIG_TYPE
from bnserve.proto.tokenizer import TOKENIZER_KEY
from bnserve.repository.layout import BACKEND, CONFIG_FILE, PLATFORM
from bnserve.server.errors import ConfigError, quoted
from bnserve.server.pbtxt_fields import filter_known_fields
from bnserve.server.settings import ServerSettings

log = logging.getLogger(__name__)

MAX_CONFIG_BYTES = 1024 * 1024

# Field paths bnserve acts on. A set field outside this list is reported, never dropped silently.
HONOURED = frozenset({
    "name", "platform", "backend", "max_batch_size",
    "input", "input.name", "input.data_type", "input.dims", "input.format",
    "output", "output.name", "output.data_type", "output.dims", "output.label_filename",
    "dynamic_batching", "dynamic_batching.max_queue_delay_microseconds",
    "dynamic_batching.preferred_batch_size", "dynamic_batching.default_queue_policy",
    "dynamic_batching.default_queue_policy.max_queue_size",
    "dynamic_batching.default_queue_policy.default_timeout_microseconds",
    "dynamic_batching.default_queue_policy.timeout_action",  # REJECT; DELAY is reported
    "dynamic_batching.default_queue_policy.allow_timeout_override",
    "instance_group", "instance_group.count", "instance_group.name", "instance_group.kind",
    "version_policy", "version_policy.latest", "version_policy.latest.num_versions",
    "version_policy.all", "version_policy.specific", "version_policy.specific.versions",
    "parameters",
})
# parameters bnserve reads: Triton's onnxruntime backend names for the thread counts and the
# execution mode (so a Triton config works unchanged), onnxruntime's own session config keys
# for thread spinning, and bnserve's own switch for a model that fails the
# batch-independence check at load.
THREAD_PARAMETERS = ("intra_op_thread_count", "inter_op_thread_count")
EXECUTION_MODE_PARAMETER = "execution_mode"  # Triton: "0" sequential, "1" parallel
SPINNING_PARAMETERS = {"session.intra_op.allow_spinning": "intra",
                       "session.inter_op.allow_spinning": "inter"}
# Triton's optimization { graph { level } }: -1 basic, 1 extended, 2 disabled, anything
# else all. Our .proto leaves `optimization` out, so the value is read from the text.
GRAPH_LEVEL_FIELD = "optimization.graph.level"
TRITON_GRAPH_LEVELS = {-1: "basic", 1: "extended", 2: "disabled"}
BATCH_DEPENDENT_PARAMETER = "batch_dependent"
DYNAMIC_BATCHING_PARAMETER = "dynamic_batching"  # "off": never merge this model's requests
BATCH_DEPENDENT_VALUES = ("refuse", "serve_unbatched")
# Fields that change what is computed: serving the model without them would be wrong.
REFUSED = {"sequence_batching": "sequence batching (stateful models)",
           "ensemble_scheduling": "ensembles", "batch_input": "batch inputs",
           "batch_output": "batch outputs"}


@dataclass(frozen=True)
class VersionPolicy:
    """Which of the versions on disk are served (Triton's version_policy)."""

    kind: Literal["latest", "all", "specific"] = "latest"
    num_versions: int = 1
    versions: tuple[int, ...] = ()

    def select(self, available: Iterable[int]) -> list[int]:
        """The versions to serve, ascending, out of those on disk."""
        on_disk = sorted(set(available))
        if self.kind == "all":
            return on_disk
        if self.kind == "specific":
            return [v for v in on_disk if v in self.versions]
        return on_disk[-self.num_versions:]

    def describe(self) -> str:
        if self.kind == "latest":
            return f"latest {self.num_versions}"
        if self.kind == "specific":
            return "specific " + ", ".join(map(str, self.versions))
        return "all"


@dataclass(frozen=True)
class TensorConfig:
    """An input or output as config.pbtxt declares it."""

    name: str
    datatype: str | None  # protocol datatype; None when the config leaves it out
    dims: tuple[int, ...] | None  # Triton's dims (no batch axis when max_batch_size > 0)
    format: str = "FORMAT_NONE"  # inputs: FORMAT_NONE, FORMAT_NCHW or FORMAT_NHWC
    label_filename: str | None = None  # outputs: class labels, one per line


@dataclass(frozen=True)
class ModelSettings:
    """How one model is served; everything the loader and batcher read about a model."""

    source: str  # "config.pbtxt", "server defaults" or "load request"
    digest: str  # of what it was read from: a change reloads the model
    max_batch_size: int | None  # None: not configured, so derived from the graph at load
    dynamic_batching: bool | None  # None: not configured: on when batches can hold 2+ rows
    max_queue_delay_s: float
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    queue_timeout_s: float | None  # reject requests queued longer; None: no limit
    allow_timeout_override: bool  # a request's `timeout` parameter may shorten it
    instance_count: int  # concurrent onnxruntime runs
    intra_op_threads: int  # per instance; 0: the usable cores // instance_count
    inter_op_threads: int
    version_policy: VersionPolicy
    inputs: tuple[TensorConfig, ...] = ()
    outputs: tuple[TensorConfig, ...] = ()
    batch_dependent: Literal["refuse", "serve_unbatched"] = "refuse"
    graph_optimization_level: str = "all"  # disabled, basic, extended or all
    execution_mode: str = "sequential"  # or parallel
    intra_op_spinning: bool | None = None  # None: on while the threads fit the cores
    inter_op_spinning: bool | None = None
    unhonoured: tuple[str, ...] = field(default=(), compare=False)


def default_settings(server: ServerSettings) -> ModelSettings:
    """A model without config.pbtxt: the server-wide settings, batching on when the graph allows."""
    return ModelSettings(
        source="server defaults",
        digest="",
        max_batch_size=None,
        dynamic_batching=None,
        max_queue_delay_s=server.max_queue_delay_ms / 1000.0,
        preferred_batch_sizes=(),
        max_queue_size=server.max_queue_size,
        queue_timeout_s=None,
        allow_timeout_override=False,
        instance_count=1,
        intra_op_threads=server.intra_op_threads,
        inter_op_threads=server.inter_op_threads,
        version_policy=VersionPolicy(),
        graph_optimization_level=server.graph_optimization_level,
        execution_mode=server.execution_mode,
        intra_op_spinning=_server_spinning(server),
        inter_op_spinning=_server_spinning(server),
    )


def _server_spinning(server: ServerSettings) -> bool | None:
    return None if server.allow_spinning == "auto" else server.allow_spinning == "on"


def read_config_text(model_dir: Path) -> bytes | None:
    """The bytes of MODEL/config.pbtxt, None when there is none; ConfigError when unreadable."""
    path = model_dir / CONFIG_FILE
    if not path.exists() and not path.is_symlink():
        return None
    if path.is_symlink() or not path.is_file():
        raise ConfigError(f"{CONFIG_FILE} is not a regular file")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{CONFIG_FILE} is larger than {MAX_CONFIG_BYTES // 1024} KiB")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{CONFIG_FILE} cannot be read", f"{path}: {exc}") from exc


def settings_from_text(text: bytes | None, model_name: str, server: ServerSettings) -> ModelSettings:
    """The settings a config.pbtxt describes (server defaults when ``text`` is None)."""
    if text is None:
        return default_settings(server)
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{CONFIG_FILE} is not UTF-8 text") from None
    config = mc.ModelConfig()
    try:
        known, unknown, present, values = filter_known_fields(decoded,
                                                              mc.ModelConfig.DESCRIPTOR)
        text_format.Parse(known, config)
    except text_format.ParseError as exc:
        raise ConfigError(f"{CONFIG_FILE}: {_short(str(exc))}") from None
    graph_level = _graph_level(values, CONFIG_FILE)
    if "optimization" in unknown:  # name what else it sets, not the whole message
        at = unknown.index("optimization")
        unknown[at:at + 1] = [p for p in values
                              if p.startswith("optimization.") and p != GRAPH_LEVEL_FIELD]
    return settings_from_config(config, model_name, server, source=CONFIG_FILE,
                                digest=hashlib.sha256(text).hexdigest(), unknown=unknown,
                                present=present, graph_level=graph_level)


def _graph_level(values: dict[str, str], source: str) -> str | None:
    """Triton's optimization.graph.level as an onnxruntime level; None when not set."""
    token = values.get(GRAPH_LEVEL_FIELD)
    if token is None:
        return None
    try:
        level = int(token, 0)
    except ValueError:
        raise ConfigError(f"{source}: {GRAPH_LEVEL_FIELD} must be an integer (-1 basic, "
                          f"1 extended, 2 disabled, 0 or unset all), not {_short(token, 40)}"
                          ) from None
    return TRITON_GRAPH_LEVELS.get(level, "all")


def settings_from_json(text: str, model_name: str, server: ServerSettings) -> ModelSettings:
    """A load request's ``config`` parameter: a ModelConfig as JSON (Triton's convention)."""
    config = mc.ModelConfig()
    try:
        json_format.Parse(text, config)
        keys = json.loads(text).keys()
    except (json_format.ParseError, ValueError, AttributeError) as exc:
        raise ConfigError(f"config parameter: {_short(str(exc))}") from None
    by_json_name = {f.json_name: f.name for f in mc.ModelConfig.DESCRIPTOR.fields}
    present = {by_json_name.get(key, key) for key in keys}
    return settings_from_config(config, model_name, server, source="load request",
                                digest="request:" + hashlib.sha256(text.encode()).hexdigest(),
                                present=present)


def settings_from_config(config: mc.ModelConfig, model_name: str, server: ServerSettings, *,
                         source: str, digest: str, unknown: Iterable[str] = (),
                         present: set[str], graph_level: str | None = None) -> ModelSettings:
    """Check a parsed ModelConfig and turn it into ModelSettings; ConfigError names the field.

    What the config leaves out is filled as Triton's auto-complete does: no max_batch_size
    takes the server's (or 0 for a graph without a batch axis), no scheduling turns the
    dynamic batcher on with the server's delay and queue size when batches can hold more
    than one row. ``parameters { key: "dynamic_batching" value { string_value: "off" } }``
    switches merging off for one model.
    """
    unknown = list(unknown)
    for path in unknown:
        top = path.split(".", 1)[0]
        if top in REFUSED:
            raise ConfigError(f"{source}: {top} is set, and bnserve does not serve {REFUSED[top]}")
    if config.name and config.name != model_name:
        raise ConfigError(f"{source}: name {quoted(config.name)} differs from the model "
                          f"folder {quoted(model_name)}")
    if config.platform not in ("", PLATFORM):
        raise ConfigError(f"{source}: platform {quoted(config.platform)} is not served; "
                          f"bnserve serves {PLATFORM}")
    if config.backend not in ("", BACKEND):
        raise ConfigError(f"{source}: backend {quoted(config.backend)} is not served; "
                          f"bnserve serves {BACKEND}")
    if config.max_batch_size < 0:
        raise ConfigError(f"{source}: max_batch_size must be 0 (no batch axis) or more")

    batching: bool | None = config.HasField("dynamic_batching") or None  # None: auto
    dynamic = config.dynamic_batching
    if batching and config.max_batch_size == 0:
        raise ConfigError(f"{source}: dynamic_batching needs max_batch_size > 0")
    preferred = tuple(sorted(set(dynamic.preferred_batch_size)))
    if any(size < 1 or size > config.max_batch_size for size in preferred):
        raise ConfigError(f"{source}: dynamic_batching.preferred_batch_size must lie in "
                          f"[1, max_batch_size={config.max_batch_size}]")
    queue = dynamic.default_queue_policy
    extra: list[str] = []
    if queue.timeout_action == mc.ModelQueuePolicy.DELAY:
        extra.append("dynamic_batching.default_queue_policy.timeout_action (DELAY; bnserve rejects)")

    count = sum(group.count or 1 for group in config.instance_group) or 1
    for group in config.instance_group:
        if group.kind not in (mc.ModelInstanceGroup.KIND_AUTO, mc.ModelInstanceGroup.KIND_CPU):
            kind = mc.ModelInstanceGroup.Kind.Name(group.kind)
            extra.append(f"instance_group.kind ({kind}; the device is the server's --device)")

    threads = {}
    execution_mode = server.execution_mode
    spinning = {"intra": _server_spinning(server), "inter": _server_spinning(server)}
    batch_dependent = "refuse"
    for key, parameter in config.parameters.items():
        value = parameter.string_value
        if key in THREAD_PARAMETERS:
            if not value.isascii() or not value.isdigit() or int(value) > 1024:
                raise ConfigError(f"{source}: parameters[{quoted(key)}] must be an integer "
                                  "from 0 to 1024")
            threads[key] = int(value)
        elif key == EXECUTION_MODE_PARAMETER:
            if value not in ("0", "1"):
                raise ConfigError(f"{source}: parameters[{quoted(key)}] must be 0 (sequential) "
                                  "or 1 (parallel)")
            execution_mode = "sequential" if value == "0" else "parallel"
        elif key in SPINNING_PARAMETERS:
            if value not in ("0", "1"):
                raise ConfigError(f"{source}: parameters[{quoted(key)}] must be 0 (no spinning) "
                                  "or 1 (spin)")
            spinning[SPINNING_PARAMETERS[key]] = value == "1"
        elif key == DYNAMIC_BATCHING_PARAMETER:
            if value not in ("on", "off"):
                raise ConfigError(f"{source}: parameters[{quoted(key)}] must be on or off")
            if value == "off" and config.HasField("dynamic_batching"):
                raise ConfigError(f"{source}: dynamic_batching is set and parameters"
                                  f"[{quoted(key)}] says off; keep one")
            batching = value == "on"
        elif key == BATCH_DEPENDENT_PARAMETER:
            if value not in BATCH_DEPENDENT_VALUES:
                raise ConfigError(f"{source}: parameters[{quoted(key)}] must be one of "
                                  f"{', '.join(BATCH_DEPENDENT_VALUES)}")
            batch_dependent = value
        elif key == TOKENIZER_KEY:  # what ModelConfig reports, sent back: the graph's wins
            extra.append(f"parameters[{quoted(key)}] (the tokenizer is the one in model.onnx)")
        else:
            extra.append(f"parameters[{quoted(key)}]")

    unhonoured = [p for p in set_field_paths(config) if p not in HONOURED] + unknown
    unhonoured = [p for p in unhonoured if not _under(p, unhonoured)] + extra
    return ModelSettings(
        source=source,
        digest=digest,
        max_batch_size=config.max_batch_size if "max_batch_size" in present else None,
        dynamic_batching=batching,
        max_queue_delay_s=(dynamic.max_queue_delay_microseconds / 1e6
                           if config.HasField("dynamic_batching")
                           else server.max_queue_delay_ms / 1000.0),
        preferred_batch_sizes=preferred,
        # Triton's 0 means unbounded; bnserve never queues without bound, so 0 is the
        # server's max_queue_size.
        max_queue_size=queue.max_queue_size or server.max_queue_size,
        queue_timeout_s=(queue.default_timeout_microseconds / 1e6
                         if queue.default_timeout_microseconds else None),
        allow_timeout_override=queue.allow_timeout_override,
        instance_count=count,
        intra_op_threads=threads.get("intra_op_thread_count", server.intra_op_threads),
        # Triton's 0 is "onnxruntime's default"; bnserve's default is the server's.
        inter_op_threads=threads.get("inter_op_thread_count") or server.inter_op_threads,
        version_policy=_version_policy(config.version_policy, source),
        inputs=tuple(_tensor(t, "input", source) for t in config.input),
        outputs=tuple(_tensor(t, "output", source) for t in config.output),
        batch_dependent=batch_dependent,  # type: ignore[arg-type]
        graph_optimization_level=graph_level or server.graph_optimization_level,
        execution_mode=execution_mode,
        intra_op_spinning=spinning["intra"],
        inter_op_spinning=spinning["inter"],
        unhonoured=tuple(dict.fromkeys(unhonoured)),
    )


def _version_policy(policy: mc.ModelVersionPolicy, source: str) -> VersionPolicy:
    choice = policy.WhichOneof("policy_choice")
    if choice == "all":
        return VersionPolicy(kind="all")
    if choice == "specific":
        versions = tuple(sorted(set(policy.specific.versions)))
        if not versions or versions[0] < 1:
            raise ConfigError(f"{source}: version_policy.specific.versions must list positive "
                              "versions")
        return VersionPolicy(kind="specific", versions=versions)
    if choice == "latest":
        if policy.latest.num_versions < 1:
            raise ConfigError(f"{source}: version_policy.latest.num_versions must be at least 1")
        return VersionPolicy(kind="latest", num_versions=policy.latest.num_versions)
    return VersionPolicy()


def _tensor(tensor: mc.ModelInput | mc.ModelOutput, kind: str, source: str) -> TensorConfig:
    if not tensor.name:
        raise ConfigError(f"{source}: every {kind} needs a name")
    datatype = None
    if tensor.data_type != mc.TYPE_INVALID:
        found = BY_CONFIG_TYPE.get(mc.DataType.Name(tensor.data_type))
        if found is None:
            raise ConfigError(f"{source}: {kind} {quoted(tensor.name)} has data_type "
                              f"{mc.DataType.Name(tensor.data_type)}, which bnserve cannot serve")
        datatype = found.name
    if any(d < -1 or d == 0 for d in tensor.dims):
        raise ConfigError(f"{source}: {kind} {quoted(tensor.name)} dims must be positive or -1")
    label_filename = getattr(tensor, "label_filename", "") or None
    return TensorConfig(
        name=tensor.name,
        datatype=datatype,
        dims=tuple(tensor.dims) if len(tensor.dims) else None,
        format=mc.ModelInput.Format.Name(tensor.format) if kind == "input" else "FORMAT_NONE",
        label_filename=label_filename,
    )


def set_field_paths(message: Message, prefix: str = "") -> list[str]:
    """Dotted paths of every field set in ``message`` (map entries are not descended)."""
    paths = []
    for descriptor, value in message.ListFields():
        path = prefix + descriptor.name
        paths.append(path)
        if descriptor.message_type is not None and not descriptor.message_type.GetOptions().map_entry:
            for item in (value if descriptor.is_repeated else [value]):
                paths += set_field_paths(item, path + ".")
    return paths


def _under(path: str, paths: list[str]) -> bool:
    """True when a parent of ``path`` is in ``paths`` (report "input.reshape", not its fields)."""
    parts = path.split(".")
    return any(".".join(parts[:i]) in paths for i in range(1, len(parts)))



def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
