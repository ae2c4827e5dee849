import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NoiseMechanism(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NOISE_MECHANISM_UNSPECIFIED: _ClassVar[NoiseMechanism]
    NOISE_MECHANISM_LAPLACE: _ClassVar[NoiseMechanism]
    NOISE_MECHANISM_GEOMETRIC: _ClassVar[NoiseMechanism]
NOISE_MECHANISM_UNSPECIFIED: NoiseMechanism
NOISE_MECHANISM_LAPLACE: NoiseMechanism
NOISE_MECHANISM_GEOMETRIC: NoiseMechanism

class Moments(_message.Message):
    __slots__ = ("count", "sum", "min", "max", "mean", "m2", "sum_compensation")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    M2_FIELD_NUMBER: _ClassVar[int]
    SUM_COMPENSATION_FIELD_NUMBER: _ClassVar[int]
    count: int
    sum: float
    min: float
    max: float
    mean: float
    m2: float
    sum_compensation: float
    def __init__(self, count: _Optional[int] = ..., sum: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., mean: _Optional[float] = ..., m2: _Optional[float] = ..., sum_compensation: _Optional[float] = ...) -> None: ...

class ExponentialHistogram(_message.Message):
    __slots__ = ("scale", "zero_count", "zero_threshold", "positive", "negative", "max_buckets")
    class Buckets(_message.Message):
        __slots__ = ("offset", "bucket_counts")
        OFFSET_FIELD_NUMBER: _ClassVar[int]
        BUCKET_COUNTS_FIELD_NUMBER: _ClassVar[int]
        offset: int
        bucket_counts: _containers.RepeatedScalarFieldContainer[int]
        def __init__(self, offset: _Optional[int] = ..., bucket_counts: _Optional[_Iterable[int]] = ...) -> None: ...
    SCALE_FIELD_NUMBER: _ClassVar[int]
    ZERO_COUNT_FIELD_NUMBER: _ClassVar[int]
    ZERO_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    POSITIVE_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_BUCKETS_FIELD_NUMBER: _ClassVar[int]
    scale: int
    zero_count: int
    zero_threshold: float
    positive: ExponentialHistogram.Buckets
    negative: ExponentialHistogram.Buckets
    max_buckets: int
    def __init__(self, scale: _Optional[int] = ..., zero_count: _Optional[int] = ..., zero_threshold: _Optional[float] = ..., positive: _Optional[_Union[ExponentialHistogram.Buckets, _Mapping]] = ..., negative: _Optional[_Union[ExponentialHistogram.Buckets, _Mapping]] = ..., max_buckets: _Optional[int] = ...) -> None: ...

class Summary(_message.Message):
    __slots__ = ("moments", "histogram")
    MOMENTS_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_FIELD_NUMBER: _ClassVar[int]
    moments: Moments
    histogram: ExponentialHistogram
    def __init__(self, moments: _Optional[_Union[Moments, _Mapping]] = ..., histogram: _Optional[_Union[ExponentialHistogram, _Mapping]] = ...) -> None: ...

class SeriesSummary(_message.Message):
    __slots__ = ("metric", "labels", "summary", "start_time", "end_time", "mean_error")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    MEAN_ERROR_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    summary: Summary
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    mean_error: float
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., summary: _Optional[_Union[Summary, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., mean_error: _Optional[float] = ...) -> None: ...

class NoiseError(_message.Message):
    __slots__ = ("stddev", "expected_abs")
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_ABS_FIELD_NUMBER: _ClassVar[int]
    stddev: float
    expected_abs: float
    def __init__(self, stddev: _Optional[float] = ..., expected_abs: _Optional[float] = ...) -> None: ...

class PrivacyInfo(_message.Message):
    __slots__ = ("noised", "epsilon", "delta", "mechanism", "count_error", "sum_error", "bucket_error", "min_count", "lower_bound", "upper_bound")
    NOISED_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    COUNT_ERROR_FIELD_NUMBER: _ClassVar[int]
    SUM_ERROR_FIELD_NUMBER: _ClassVar[int]
    BUCKET_ERROR_FIELD_NUMBER: _ClassVar[int]
    MIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    LOWER_BOUND_FIELD_NUMBER: _ClassVar[int]
    UPPER_BOUND_FIELD_NUMBER: _ClassVar[int]
    noised: bool
    epsilon: float
    delta: float
    mechanism: NoiseMechanism
    count_error: NoiseError
    sum_error: NoiseError
    bucket_error: NoiseError
    min_count: int
    lower_bound: float
    upper_bound: float
    def __init__(self, noised: _Optional[bool] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., mechanism: _Optional[_Union[NoiseMechanism, str]] = ..., count_error: _Optional[_Union[NoiseError, _Mapping]] = ..., sum_error: _Optional[_Union[NoiseError, _Mapping]] = ..., bucket_error: _Optional[_Union[NoiseError, _Mapping]] = ..., min_count: _Optional[int] = ..., lower_bound: _Optional[float] = ..., upper_bound: _Optional[float] = ...) -> None: ...
