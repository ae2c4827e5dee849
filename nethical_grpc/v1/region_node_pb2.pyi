import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nethical_grpc.v1 import summary_pb2 as _summary_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DataScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_SCOPE_UNSPECIFIED: _ClassVar[DataScope]
    DATA_SCOPE_INSTANCE: _ClassVar[DataScope]
    DATA_SCOPE_REGION: _ClassVar[DataScope]
DATA_SCOPE_UNSPECIFIED: DataScope
DATA_SCOPE_INSTANCE: DataScope
DATA_SCOPE_REGION: DataScope

class IngestRequest(_message.Message):
    __slots__ = ("metric", "labels", "values", "timestamps_unix_nano", "time")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMPS_UNIX_NANO_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    values: _containers.RepeatedScalarFieldContainer[float]
    timestamps_unix_nano: _containers.RepeatedScalarFieldContainer[int]
    time: _timestamp_pb2.Timestamp
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., values: _Optional[_Iterable[float]] = ..., timestamps_unix_nano: _Optional[_Iterable[int]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("accepted_batches", "accepted_values")
    ACCEPTED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_VALUES_FIELD_NUMBER: _ClassVar[int]
    accepted_batches: int
    accepted_values: int
    def __init__(self, accepted_batches: _Optional[int] = ..., accepted_values: _Optional[int] = ...) -> None: ...

class GetSummariesRequest(_message.Message):
    __slots__ = ("start_time", "end_time", "metrics", "label_filter", "group_by_labels")
    class LabelFilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FILTER_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_LABELS_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    metrics: _containers.RepeatedScalarFieldContainer[str]
    label_filter: _containers.ScalarMap[str, str]
    group_by_labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., metrics: _Optional[_Iterable[str]] = ..., label_filter: _Optional[_Mapping[str, str]] = ..., group_by_labels: _Optional[_Iterable[str]] = ...) -> None: ...

class GetSummariesResponse(_message.Message):
    __slots__ = ("series", "region_id", "instance_id", "scope", "data_as_of")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    DATA_AS_OF_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[_summary_pb2.SeriesSummary]
    region_id: str
    instance_id: str
    scope: DataScope
    data_as_of: _timestamp_pb2.Timestamp
    def __init__(self, series: _Optional[_Iterable[_Union[_summary_pb2.SeriesSummary, _Mapping]]] = ..., region_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., scope: _Optional[_Union[DataScope, str]] = ..., data_as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodeInfoResponse(_message.Message):
    __slots__ = ("region_id", "instance_id", "scope", "window", "retention", "series_count", "window_count", "histogram_scale", "version", "components")
    class ComponentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    RETENTION_FIELD_NUMBER: _ClassVar[int]
    SERIES_COUNT_FIELD_NUMBER: _ClassVar[int]
    WINDOW_COUNT_FIELD_NUMBER: _ClassVar[int]
    HISTOGRAM_SCALE_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    region_id: str
    instance_id: str
    scope: DataScope
    window: _duration_pb2.Duration
    retention: _duration_pb2.Duration
    series_count: int
    window_count: int
    histogram_scale: int
    version: str
    components: _containers.ScalarMap[str, str]
    def __init__(self, region_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., scope: _Optional[_Union[DataScope, str]] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retention: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., series_count: _Optional[int] = ..., window_count: _Optional[int] = ..., histogram_scale: _Optional[int] = ..., version: _Optional[str] = ..., components: _Optional[_Mapping[str, str]] = ...) -> None: ...
