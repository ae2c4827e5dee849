import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from nethical_grpc.v1 import governance_pb2 as _governance_pb2
from nethical_grpc.v1 import summary_pb2 as _summary_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class MissingReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MISSING_REASON_UNSPECIFIED: _ClassVar[MissingReason]
    MISSING_REASON_UNHEALTHY: _ClassVar[MissingReason]
    MISSING_REASON_DEADLINE_EXCEEDED: _ClassVar[MissingReason]
    MISSING_REASON_UNAVAILABLE: _ClassVar[MissingReason]
    MISSING_REASON_ERROR: _ClassVar[MissingReason]
    MISSING_REASON_INVALID_RESPONSE: _ClassVar[MissingReason]
    MISSING_REASON_INCOMPLETE: _ClassVar[MissingReason]

class InstanceHealth(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTANCE_HEALTH_UNSPECIFIED: _ClassVar[InstanceHealth]
    INSTANCE_HEALTH_SERVING: _ClassVar[InstanceHealth]
    INSTANCE_HEALTH_NOT_SERVING: _ClassVar[InstanceHealth]
    INSTANCE_HEALTH_UNREACHABLE: _ClassVar[InstanceHealth]

class BalancingStrategy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BALANCING_STRATEGY_UNSPECIFIED: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_ROUND_ROBIN: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_LEAST_CONNECTIONS: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_WEIGHTED_ROUND_ROBIN: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_RANDOM: _ClassVar[BalancingStrategy]
    BALANCING_STRATEGY_REGION_AWARE: _ClassVar[BalancingStrategy]
MISSING_REASON_UNSPECIFIED: MissingReason
MISSING_REASON_UNHEALTHY: MissingReason
MISSING_REASON_DEADLINE_EXCEEDED: MissingReason
MISSING_REASON_UNAVAILABLE: MissingReason
MISSING_REASON_ERROR: MissingReason
MISSING_REASON_INVALID_RESPONSE: MissingReason
MISSING_REASON_INCOMPLETE: MissingReason
INSTANCE_HEALTH_UNSPECIFIED: InstanceHealth
INSTANCE_HEALTH_SERVING: InstanceHealth
INSTANCE_HEALTH_NOT_SERVING: InstanceHealth
INSTANCE_HEALTH_UNREACHABLE: InstanceHealth
BALANCING_STRATEGY_UNSPECIFIED: BalancingStrategy
BALANCING_STRATEGY_ROUND_ROBIN: BalancingStrategy
BALANCING_STRATEGY_LEAST_CONNECTIONS: BalancingStrategy
BALANCING_STRATEGY_WEIGHTED_ROUND_ROBIN: BalancingStrategy
BALANCING_STRATEGY_RANDOM: BalancingStrategy
BALANCING_STRATEGY_REGION_AWARE: BalancingStrategy

class GetGlobalMetricsRequest(_message.Message):
    __slots__ = ("metrics", "start_time", "end_time", "quantiles", "regions", "include_region_breakdown", "region_weights", "label_filter", "group_by_labels", "region_timeout", "include_summary")
    class RegionWeightsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class LabelFilterEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_REGION_BREAKDOWN_FIELD_NUMBER: _ClassVar[int]
    REGION_WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FILTER_FIELD_NUMBER: _ClassVar[int]
    GROUP_BY_LABELS_FIELD_NUMBER: _ClassVar[int]
    REGION_TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_SUMMARY_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.RepeatedScalarFieldContainer[str]
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    quantiles: _containers.RepeatedScalarFieldContainer[float]
    regions: _containers.RepeatedScalarFieldContainer[str]
    include_region_breakdown: bool
    region_weights: _containers.ScalarMap[str, float]
    label_filter: _containers.ScalarMap[str, str]
    group_by_labels: _containers.RepeatedScalarFieldContainer[str]
    region_timeout: _duration_pb2.Duration
    include_summary: bool
    def __init__(self, metrics: _Optional[_Iterable[str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., quantiles: _Optional[_Iterable[float]] = ..., regions: _Optional[_Iterable[str]] = ..., include_region_breakdown: _Optional[bool] = ..., region_weights: _Optional[_Mapping[str, float]] = ..., label_filter: _Optional[_Mapping[str, str]] = ..., group_by_labels: _Optional[_Iterable[str]] = ..., region_timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., include_summary: _Optional[bool] = ...) -> None: ...

class QuantileValue(_message.Message):
    __slots__ = ("quantile", "value")
    QUANTILE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    quantile: float
    value: float
    def __init__(self, quantile: _Optional[float] = ..., value: _Optional[float] = ...) -> None: ...

class SeriesStatistics(_message.Message):
    __slots__ = ("count", "sum", "mean", "min", "max", "stddev", "quantiles", "relative_error")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    SUM_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    MIN_FIELD_NUMBER: _ClassVar[int]
    MAX_FIELD_NUMBER: _ClassVar[int]
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    QUANTILES_FIELD_NUMBER: _ClassVar[int]
    RELATIVE_ERROR_FIELD_NUMBER: _ClassVar[int]
    count: int
    sum: float
    mean: float
    min: float
    max: float
    stddev: float
    quantiles: _containers.RepeatedCompositeFieldContainer[QuantileValue]
    relative_error: float
    def __init__(self, count: _Optional[int] = ..., sum: _Optional[float] = ..., mean: _Optional[float] = ..., min: _Optional[float] = ..., max: _Optional[float] = ..., stddev: _Optional[float] = ..., quantiles: _Optional[_Iterable[_Union[QuantileValue, _Mapping]]] = ..., relative_error: _Optional[float] = ...) -> None: ...

class RegionStatistics(_message.Message):
    __slots__ = ("region_id", "statistics")
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    region_id: str
    statistics: SeriesStatistics
    def __init__(self, region_id: _Optional[str] = ..., statistics: _Optional[_Union[SeriesStatistics, _Mapping]] = ...) -> None: ...

class MetricResult(_message.Message):
    __slots__ = ("metric", "labels", "statistics", "weighted_mean", "regions", "summary", "privacy")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRIC_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    STATISTICS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTED_MEAN_FIELD_NUMBER: _ClassVar[int]
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    statistics: SeriesStatistics
    weighted_mean: float
    regions: _containers.RepeatedCompositeFieldContainer[RegionStatistics]
    summary: _summary_pb2.Summary
    privacy: MetricPrivacy
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., statistics: _Optional[_Union[SeriesStatistics, _Mapping]] = ..., weighted_mean: _Optional[float] = ..., regions: _Optional[_Iterable[_Union[RegionStatistics, _Mapping]]] = ..., summary: _Optional[_Union[_summary_pb2.Summary, _Mapping]] = ..., privacy: _Optional[_Union[MetricPrivacy, _Mapping]] = ...) -> None: ...

class MetricPrivacy(_message.Message):
    __slots__ = ("noised", "noised_regions", "count_error", "sum_error", "mean_error", "max_epsilon")
    NOISED_FIELD_NUMBER: _ClassVar[int]
    NOISED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    COUNT_ERROR_FIELD_NUMBER: _ClassVar[int]
    SUM_ERROR_FIELD_NUMBER: _ClassVar[int]
    MEAN_ERROR_FIELD_NUMBER: _ClassVar[int]
    MAX_EPSILON_FIELD_NUMBER: _ClassVar[int]
    noised: bool
    noised_regions: _containers.RepeatedScalarFieldContainer[str]
    count_error: _summary_pb2.NoiseError
    sum_error: _summary_pb2.NoiseError
    mean_error: float
    max_epsilon: float
    def __init__(self, noised: _Optional[bool] = ..., noised_regions: _Optional[_Iterable[str]] = ..., count_error: _Optional[_Union[_summary_pb2.NoiseError, _Mapping]] = ..., sum_error: _Optional[_Union[_summary_pb2.NoiseError, _Mapping]] = ..., mean_error: _Optional[float] = ..., max_epsilon: _Optional[float] = ...) -> None: ...

class MissingRegion(_message.Message):
    __slots__ = ("region_id", "instance_id", "reason", "message")
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    region_id: str
    instance_id: str
    reason: MissingReason
    message: str
    def __init__(self, region_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., reason: _Optional[_Union[MissingReason, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Coverage(_message.Message):
    __slots__ = ("regions_requested", "regions_answered", "missing", "instances_queried", "instances_answered", "complete", "oldest_data_as_of", "max_staleness")
    REGIONS_REQUESTED_FIELD_NUMBER: _ClassVar[int]
    REGIONS_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    MISSING_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_QUERIED_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_ANSWERED_FIELD_NUMBER: _ClassVar[int]
    COMPLETE_FIELD_NUMBER: _ClassVar[int]
    OLDEST_DATA_AS_OF_FIELD_NUMBER: _ClassVar[int]
    MAX_STALENESS_FIELD_NUMBER: _ClassVar[int]
    regions_requested: _containers.RepeatedScalarFieldContainer[str]
    regions_answered: _containers.RepeatedScalarFieldContainer[str]
    missing: _containers.RepeatedCompositeFieldContainer[MissingRegion]
    instances_queried: int
    instances_answered: int
    complete: bool
    oldest_data_as_of: _timestamp_pb2.Timestamp
    max_staleness: _duration_pb2.Duration
    def __init__(self, regions_requested: _Optional[_Iterable[str]] = ..., regions_answered: _Optional[_Iterable[str]] = ..., missing: _Optional[_Iterable[_Union[MissingRegion, _Mapping]]] = ..., instances_queried: _Optional[int] = ..., instances_answered: _Optional[int] = ..., complete: _Optional[bool] = ..., oldest_data_as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., max_staleness: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetGlobalMetricsResponse(_message.Message):
    __slots__ = ("results", "coverage", "computed_at")
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    COVERAGE_FIELD_NUMBER: _ClassVar[int]
    COMPUTED_AT_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[MetricResult]
    coverage: Coverage
    computed_at: _timestamp_pb2.Timestamp
    def __init__(self, results: _Optional[_Iterable[_Union[MetricResult, _Mapping]]] = ..., coverage: _Optional[_Union[Coverage, _Mapping]] = ..., computed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListRegionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InstanceInfo(_message.Message):
    __slots__ = ("instance_id", "endpoint", "health", "health_changed_at", "requests", "failures", "error_rate", "ewma_latency", "in_flight", "ejected", "ejected_for", "weight", "routable", "resolved_from", "rejected", "version", "region_scope")
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_CHANGED_AT_FIELD_NUMBER: _ClassVar[int]
    REQUESTS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    ERROR_RATE_FIELD_NUMBER: _ClassVar[int]
    EWMA_LATENCY_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FIELD_NUMBER: _ClassVar[int]
    EJECTED_FOR_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    ROUTABLE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FROM_FIELD_NUMBER: _ClassVar[int]
    REJECTED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    REGION_SCOPE_FIELD_NUMBER: _ClassVar[int]
    instance_id: str
    endpoint: str
    health: InstanceHealth
    health_changed_at: _timestamp_pb2.Timestamp
    requests: int
    failures: int
    error_rate: float
    ewma_latency: _duration_pb2.Duration
    in_flight: int
    ejected: bool
    ejected_for: _duration_pb2.Duration
    weight: int
    routable: bool
    resolved_from: str
    rejected: int
    version: str
    region_scope: bool
    def __init__(self, instance_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., health: _Optional[_Union[InstanceHealth, str]] = ..., health_changed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., requests: _Optional[int] = ..., failures: _Optional[int] = ..., error_rate: _Optional[float] = ..., ewma_latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., in_flight: _Optional[int] = ..., ejected: _Optional[bool] = ..., ejected_for: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., weight: _Optional[int] = ..., routable: _Optional[bool] = ..., resolved_from: _Optional[str] = ..., rejected: _Optional[int] = ..., version: _Optional[str] = ..., region_scope: _Optional[bool] = ...) -> None: ...

class RegionInfo(_message.Message):
    __slots__ = ("region_id", "instances", "healthy")
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    region_id: str
    instances: _containers.RepeatedCompositeFieldContainer[InstanceInfo]
    healthy: bool
    def __init__(self, region_id: _Optional[str] = ..., instances: _Optional[_Iterable[_Union[InstanceInfo, _Mapping]]] = ..., healthy: _Optional[bool] = ...) -> None: ...

class ListRegionsResponse(_message.Message):
    __slots__ = ("regions", "strategy", "local_region", "stay_in_region")
    REGIONS_FIELD_NUMBER: _ClassVar[int]
    STRATEGY_FIELD_NUMBER: _ClassVar[int]
    LOCAL_REGION_FIELD_NUMBER: _ClassVar[int]
    STAY_IN_REGION_FIELD_NUMBER: _ClassVar[int]
    regions: _containers.RepeatedCompositeFieldContainer[RegionInfo]
    strategy: BalancingStrategy
    local_region: str
    stay_in_region: bool
    def __init__(self, regions: _Optional[_Iterable[_Union[RegionInfo, _Mapping]]] = ..., strategy: _Optional[_Union[BalancingStrategy, str]] = ..., local_region: _Optional[str] = ..., stay_in_region: _Optional[bool] = ...) -> None: ...

class CoordinatorServiceEvaluateRequest(_message.Message):
    __slots__ = ("action", "region_id", "stay_in_region")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    STAY_IN_REGION_FIELD_NUMBER: _ClassVar[int]
    action: _governance_pb2.AgentAction
    region_id: str
    stay_in_region: bool
    def __init__(self, action: _Optional[_Union[_governance_pb2.AgentAction, _Mapping]] = ..., region_id: _Optional[str] = ..., stay_in_region: _Optional[bool] = ...) -> None: ...

class CoordinatorServiceEvaluateResponse(_message.Message):
    __slots__ = ("evaluation", "endpoint", "attempts")
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    evaluation: _governance_pb2.ActionEvaluation
    endpoint: str
    attempts: int
    def __init__(self, evaluation: _Optional[_Union[_governance_pb2.ActionEvaluation, _Mapping]] = ..., endpoint: _Optional[str] = ..., attempts: _Optional[int] = ...) -> None: ...

class CoordinatorServiceEvaluateStreamRequest(_message.Message):
    __slots__ = ("action", "region_id", "actions", "stay_in_region")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    STAY_IN_REGION_FIELD_NUMBER: _ClassVar[int]
    action: _governance_pb2.AgentAction
    region_id: str
    actions: _containers.RepeatedCompositeFieldContainer[_governance_pb2.AgentAction]
    stay_in_region: bool
    def __init__(self, action: _Optional[_Union[_governance_pb2.AgentAction, _Mapping]] = ..., region_id: _Optional[str] = ..., actions: _Optional[_Iterable[_Union[_governance_pb2.AgentAction, _Mapping]]] = ..., stay_in_region: _Optional[bool] = ...) -> None: ...

class CoordinatorServiceEvaluateStreamResponse(_message.Message):
    __slots__ = ("evaluation", "error", "results")
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    evaluation: _governance_pb2.ActionEvaluation
    error: _governance_pb2.ActionError
    results: _containers.RepeatedCompositeFieldContainer[_governance_pb2.ActionResult]
    def __init__(self, evaluation: _Optional[_Union[_governance_pb2.ActionEvaluation, _Mapping]] = ..., error: _Optional[_Union[_governance_pb2.ActionError, _Mapping]] = ..., results: _Optional[_Iterable[_Union[_governance_pb2.ActionResult, _Mapping]]] = ...) -> None: ...
