from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DriftReportRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "include_channels")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    include_channels: bool
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., include_channels: _Optional[bool] = ...) -> None: ...

class LayerDrift(_message.Message):
    __slots__ = ("name", "input", "channels", "score", "mean_shift", "std_ratio", "reference_mean", "reference_var", "live_mean", "live_var")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    MEAN_SHIFT_FIELD_NUMBER: _ClassVar[int]
    STD_RATIO_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_MEAN_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_VAR_FIELD_NUMBER: _ClassVar[int]
    LIVE_MEAN_FIELD_NUMBER: _ClassVar[int]
    LIVE_VAR_FIELD_NUMBER: _ClassVar[int]
    name: str
    input: str
    channels: int
    score: float
    mean_shift: float
    std_ratio: float
    reference_mean: _containers.RepeatedScalarFieldContainer[float]
    reference_var: _containers.RepeatedScalarFieldContainer[float]
    live_mean: _containers.RepeatedScalarFieldContainer[float]
    live_var: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, name: _Optional[str] = ..., input: _Optional[str] = ..., channels: _Optional[int] = ..., score: _Optional[float] = ..., mean_shift: _Optional[float] = ..., std_ratio: _Optional[float] = ..., reference_mean: _Optional[_Iterable[float]] = ..., reference_var: _Optional[_Iterable[float]] = ..., live_mean: _Optional[_Iterable[float]] = ..., live_var: _Optional[_Iterable[float]] = ...) -> None: ...

class DriftPoint(_message.Message):
    __slots__ = ("seconds_ago", "score", "layer_scores")
    SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    LAYER_SCORES_FIELD_NUMBER: _ClassVar[int]
    seconds_ago: float
    score: float
    layer_scores: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, seconds_ago: _Optional[float] = ..., score: _Optional[float] = ..., layer_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class DriftReportResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "measure", "score", "threshold", "threshold_source", "alarm", "alarm_since", "window_rows", "rows_in_window", "sampled_batches", "sampled_rows", "sample_rate", "layers", "history", "message", "dropped_samples")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    ALARM_SINCE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_ROWS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    measure: str
    score: float
    threshold: float
    threshold_source: str
    alarm: bool
    alarm_since: float
    window_rows: int
    rows_in_window: int
    sampled_batches: int
    sampled_rows: int
    sample_rate: float
    layers: _containers.RepeatedCompositeFieldContainer[LayerDrift]
    history: _containers.RepeatedCompositeFieldContainer[DriftPoint]
    message: str
    dropped_samples: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., measure: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., threshold_source: _Optional[str] = ..., alarm: _Optional[bool] = ..., alarm_since: _Optional[float] = ..., window_rows: _Optional[int] = ..., rows_in_window: _Optional[int] = ..., sampled_batches: _Optional[int] = ..., sampled_rows: _Optional[int] = ..., sample_rate: _Optional[float] = ..., layers: _Optional[_Iterable[_Union[LayerDrift, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[DriftPoint, _Mapping]]] = ..., message: _Optional[str] = ..., dropped_samples: _Optional[int] = ...) -> None: ...

class CapturedInputsRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "max_rows")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    max_rows: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., max_rows: _Optional[int] = ...) -> None: ...

class CapturedTensor(_message.Message):
    __slots__ = ("name", "datatype", "shape", "raw_contents")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    RAW_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    datatype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    raw_contents: bytes
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., raw_contents: _Optional[bytes] = ...) -> None: ...

class CapturedInputsResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "rows", "rows_seen", "inputs")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_SEEN_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    rows: int
    rows_seen: int
    inputs: _containers.RepeatedCompositeFieldContainer[CapturedTensor]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., rows: _Optional[int] = ..., rows_seen: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[CapturedTensor, _Mapping]]] = ...) -> None: ...

class RecalibrateRequest(_message.Message):
    __slots__ = ("model_name", "model_version", "max_rows", "prior_strength", "input_statistics")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    PRIOR_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    INPUT_STATISTICS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    max_rows: int
    prior_strength: float
    input_statistics: bool
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., max_rows: _Optional[int] = ..., prior_strength: _Optional[float] = ..., input_statistics: _Optional[bool] = ...) -> None: ...

class RecalibrateResponse(_message.Message):
    __slots__ = ("model_name", "base_version", "new_version", "samples", "drift_before", "drift_after", "threshold", "serving", "message")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    DRIFT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    DRIFT_AFTER_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    base_version: str
    new_version: str
    samples: int
    drift_before: float
    drift_after: float
    threshold: float
    serving: bool
    message: str
    def __init__(self, model_name: _Optional[str] = ..., base_version: _Optional[str] = ..., new_version: _Optional[str] = ..., samples: _Optional[int] = ..., drift_before: _Optional[float] = ..., drift_after: _Optional[float] = ..., threshold: _Optional[float] = ..., serving: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
