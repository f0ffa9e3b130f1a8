from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CapturedInputsRequest(_message.Message):
    __slots__ = ["max_rows", "model_name", "model_version"]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    max_rows: int
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., max_rows: _Optional[int] = ...) -> None: ...

class CapturedInputsResponse(_message.Message):
    __slots__ = ["inputs", "model_name", "model_version", "rows", "rows_seen"]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    ROWS_SEEN_FIELD_NUMBER: _ClassVar[int]
    inputs: _containers.RepeatedCompositeFieldContainer[CapturedTensor]
    model_name: str
    model_version: str
    rows: int
    rows_seen: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., rows: _Optional[int] = ..., rows_seen: _Optional[int] = ..., inputs: _Optional[_Iterable[_Union[CapturedTensor, _Mapping]]] = ...) -> None: ...

class CapturedTensor(_message.Message):
    __slots__ = ["datatype", "name", "raw_contents", "shape"]
    DATATYPE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RAW_CONTENTS_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    datatype: str
    name: str
    raw_contents: bytes
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., datatype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ..., raw_contents: _Optional[bytes] = ...) -> None: ...

class DriftPoint(_message.Message):
    __slots__ = ["layer_scores", "score", "seconds_ago"]
    LAYER_SCORES_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SECONDS_AGO_FIELD_NUMBER: _ClassVar[int]
    layer_scores: _containers.RepeatedScalarFieldContainer[float]
    score: float
    seconds_ago: float
    def __init__(self, seconds_ago: _Optional[float] = ..., score: _Optional[float] = ..., layer_scores: _Optional[_Iterable[float]] = ...) -> None: ...

class DriftReportRequest(_message.Message):
    __slots__ = ["include_channels", "model_name", "model_version"]
    INCLUDE_CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    include_channels: bool
    model_name: str
    model_version: str
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., include_channels: bool = ...) -> None: ...

class DriftReportResponse(_message.Message):
    __slots__ = ["alarm", "alarm_since", "dropped_samples", "history", "layers", "measure", "message", "model_name", "model_version", "rows_in_window", "sample_rate", "sampled_batches", "sampled_rows", "score", "threshold", "threshold_source", "window_rows"]
    ALARM_FIELD_NUMBER: _ClassVar[int]
    ALARM_SINCE_FIELD_NUMBER: _ClassVar[int]
    DROPPED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    LAYERS_FIELD_NUMBER: _ClassVar[int]
    MEASURE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROWS_IN_WINDOW_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    SAMPLED_ROWS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_SOURCE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_ROWS_FIELD_NUMBER: _ClassVar[int]
    alarm: bool
    alarm_since: float
    dropped_samples: int
    history: _containers.RepeatedCompositeFieldContainer[DriftPoint]
    layers: _containers.RepeatedCompositeFieldContainer[LayerDrift]
    measure: str
    message: str
    model_name: str
    model_version: str
    rows_in_window: int
    sample_rate: float
    sampled_batches: int
    sampled_rows: int
    score: float
    threshold: float
    threshold_source: str
    window_rows: int
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., measure: _Optional[str] = ..., score: _Optional[float] = ..., threshold: _Optional[float] = ..., threshold_source: _Optional[str] = ..., alarm: bool = ..., alarm_since: _Optional[float] = ..., window_rows: _Optional[int] = ..., rows_in_window: _Optional[int] = ..., sampled_batches: _Optional[int] = ..., sampled_rows: _Optional[int] = ..., sample_rate: _Optional[float] = ..., layers: _Optional[_Iterable[_Union[LayerDrift, _Mapping]]] = ..., history: _Optional[_Iterable[_Union[DriftPoint, _Mapping]]] = ..., message: _Optional[str] = ..., dropped_samples: _Optional[int] = ...) -> None: ...

class LayerDrift(_message.Message):
    __slots__ = ["channels", "input", "live_mean", "live_var", "mean_shift", "name", "reference_mean", "reference_var", "score", "std_ratio"]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    LIVE_MEAN_FIELD_NUMBER: _ClassVar[int]
    LIVE_VAR_FIELD_NUMBER: _ClassVar[int]
    MEAN_SHIFT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_MEAN_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_VAR_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    STD_RATIO_FIELD_NUMBER: _ClassVar[int]
    channels: int
    input: str
    live_mean: _containers.RepeatedScalarFieldContainer[float]
    live_var: _containers.RepeatedScalarFieldContainer[float]
    mean_shift: float
    name: str
    reference_mean: _containers.RepeatedScalarFieldContainer[float]
    reference_var: _containers.RepeatedScalarFieldContainer[float]
    score: float
    std_ratio: float
    def __init__(self, name: _Optional[str] = ..., input: _Optional[str] = ..., channels: _Optional[int] = ..., score: _Optional[float] = ..., mean_shift: _Optional[float] = ..., std_ratio: _Optional[float] = ..., reference_mean: _Optional[_Iterable[float]] = ..., reference_var: _Optional[_Iterable[float]] = ..., live_mean: _Optional[_Iterable[float]] = ..., live_var: _Optional[_Iterable[float]] = ...) -> None: ...

class RecalibrateRequest(_message.Message):
    __slots__ = ["input_statistics", "max_rows", "model_name", "model_version", "prior_strength"]
    INPUT_STATISTICS_FIELD_NUMBER: _ClassVar[int]
    MAX_ROWS_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    PRIOR_STRENGTH_FIELD_NUMBER: _ClassVar[int]
    input_statistics: bool
    max_rows: int
    model_name: str
    model_version: str
    prior_strength: float
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., max_rows: _Optional[int] = ..., prior_strength: _Optional[float] = ..., input_statistics: bool = ...) -> None: ...

class RecalibrateResponse(_message.Message):
    __slots__ = ["base_version", "drift_after", "drift_before", "message", "model_name", "new_version", "samples", "serving", "threshold"]
    BASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    DRIFT_AFTER_FIELD_NUMBER: _ClassVar[int]
    DRIFT_BEFORE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    NEW_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SERVING_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    base_version: str
    drift_after: float
    drift_before: float
    message: str
    model_name: str
    new_version: str
    samples: int
    serving: bool
    threshold: float
    def __init__(self, model_name: _Optional[str] = ..., base_version: _Optional[str] = ..., new_version: _Optional[str] = ..., samples: _Optional[int] = ..., drift_before: _Optional[float] = ..., drift_after: _Optional[float] = ..., threshold: _Optional[float] = ..., serving: bool = ..., message: _Optional[str] = ...) -> None: ...
