"""Plain server objects -> Triton's extension messages (ModelConfig, ModelStatistics,
RepositoryIndex), and the repository RPCs' parameters -> plain values. Pure functions.
"""

from __future__ import annotations

from collections.abc import Iterable

from bnserve.proto import model_config_pb2 as mc
from bnserve.proto import open_inference_pb2 as pb
from bnserve.proto.datatypes import BY_NAME
from bnserve.proto.tokenizer import TOKENIZER_KEY
from bnserve.repository.layout import BACKEND, PLATFORM
from bnserve.server.errors import InvalidInputError, quoted
from bnserve.server.model import ServedModel
from bnserve.server.model_config import EXECUTION_MODE_PARAMETER, SPINNING_PARAMETERS
from bnserve.server.registry import IndexRow
from bnserve.server.runtime import CUDA
from bnserve.server.statistics import Duration

# The extensions ServerMetadata announces: exactly those this server implements.
EXTENSIONS = ("classification", "model_configuration", "model_repository", "statistics")


def model_config(model: ServedModel) -> mc.ModelConfig:
    """The effective configuration of a loaded version, in Triton's convention: dims without
    the batch dimension when max_batch_size > 0."""
    plan, settings = model.plan, model.settings
    config = mc.ModelConfig(name=model.name, platform=PLATFORM, backend=BACKEND,
                            max_batch_size=plan.max_batch_size)
    batch_axis = 1 if plan.max_batch_size > 0 else 0
    label_files = {t.name: t.label_filename for t in settings.outputs if t.label_filename}
    for spec in plan.inputs:
        config.input.add(name=spec.name, data_type=_config_type(spec.datatype),
                         dims=spec.shape[batch_axis:],
                         format=mc.ModelInput.Format.Value(
                             plan.input_formats.get(spec.name, "FORMAT_NONE")))
    for spec in plan.outputs:
        config.output.add(name=spec.name, data_type=_config_type(spec.datatype),
                          dims=spec.shape[batch_axis:],
                          label_filename=label_files.get(spec.name, ""))
    if plan.batching:
        dynamic = config.dynamic_batching
        dynamic.max_queue_delay_microseconds = round(settings.max_queue_delay_s * 1e6)
        dynamic.preferred_batch_size.extend(settings.preferred_batch_sizes)
        dynamic.default_queue_policy.max_queue_size = settings.max_queue_size
        if settings.queue_timeout_s is not None:
            dynamic.default_queue_policy.default_timeout_microseconds = round(
                settings.queue_timeout_s * 1e6)
            dynamic.default_queue_policy.allow_timeout_override = settings.allow_timeout_override
    kind = (mc.ModelInstanceGroup.KIND_GPU if CUDA in model.session.providers
            else mc.ModelInstanceGroup.KIND_CPU)
    config.instance_group.add(name=model.name, kind=kind, count=settings.instance_count)
    policy = settings.version_policy
    if policy.kind == "all":
        config.version_policy.all.SetInParent()
    elif policy.kind == "specific":
        config.version_policy.specific.versions.extend(policy.versions)
    else:
        config.version_policy.latest.num_versions = policy.num_versions
    # What the session runs with (auto values resolved for the usable cores), under
    # Triton's onnxruntime parameter names.
    tuning = model.session.tuning
    parameters = {
        "intra_op_thread_count": tuning.intra_op_threads,
        "inter_op_thread_count": tuning.inter_op_threads,
        EXECUTION_MODE_PARAMETER: int(tuning.execution_mode == "parallel"),
        **{name: int(getattr(tuning, f"{pool}_op_spinning"))
           for name, pool in SPINNING_PARAMETERS.items()},
    }
    for name, value in parameters.items():
        config.parameters[name].string_value = str(value)
    config.parameters["batch_dependent"].string_value = settings.batch_dependent
    if plan.tokenizer is not None:  # the graph's, checked at load: clients encode text with it
        config.parameters[TOKENIZER_KEY].string_value = plan.tokenizer.to_json()
    return config


def _config_type(datatype: str) -> int:
    return mc.DataType.Value(BY_NAME[datatype].config_type)


def _duration(into: pb.StatisticDuration, duration: Duration) -> None:
    into.count, into.ns = duration.count, duration.ns


def model_statistics(model: ServedModel) -> pb.ModelStatistics:
    stats = model.statistics
    message = pb.ModelStatistics(name=model.name, version=model.version,
                                 last_inference=stats.last_inference_ms,
                                 inference_count=stats.inference_count,
                                 execution_count=stats.execution_count)
    infer = message.inference_stats
    for field in ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output"):
        _duration(getattr(infer, field), getattr(stats, field))
    infer.cache_hit.SetInParent()
    infer.cache_miss.SetInParent()
    for size in sorted(stats.batches):
        batch = stats.batches[size]
        entry = message.batch_stats.add(batch_size=size)
        for field in ("compute_input", "compute_infer", "compute_output"):
            _duration(getattr(entry, field), getattr(batch, field))
    return message


def repository_index(rows: Iterable[IndexRow], *, ready_only: bool) -> pb.RepositoryIndexResponse:
    response = pb.RepositoryIndexResponse()
    for row in rows:
        if ready_only and row.state.value != "READY":
            continue
        response.models.add(name=row.name, version=row.version, state=row.state.value,
                            reason=row.reason)
    return response


def load_parameters(request: pb.RepositoryModelLoadRequest) -> str | None:
    """The ``config`` parameter (a ModelConfig as JSON), if any; others are refused by name."""
    config = None
    for key, parameter in request.parameters.items():
        if key == "config" and parameter.WhichOneof("parameter_choice") == "string_param":
            config = parameter.string_param
        elif key.startswith("file:"):
            raise InvalidInputError("parameters: model files cannot be uploaded to bnserve; put "
                                    "them in the repository and load the model by name")
        else:
            raise InvalidInputError(f"parameters: {quoted(key)} is not supported; the one load "
                                    "parameter is 'config' (a ModelConfig as JSON text)")
    return config


def check_repository_name(name: str) -> None:
    """bnserve serves one repository; a named one must be it (tritonclient sends "")."""
    if name:
        raise InvalidInputError("repository_name: this server has one repository; send it empty")
