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

class DataScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DATA_SCOPE_UNSPECIFIED: _ClassVar[DataScope]
    DATA_SCOPE_INSTANCE: _ClassVar[DataScope]
    DATA_SCOPE_REGION: _ClassVar[DataScope]

class Aggregation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGGREGATION_UNSPECIFIED: _ClassVar[Aggregation]
    AGGREGATION_AVG: _ClassVar[Aggregation]
    AGGREGATION_SUM: _ClassVar[Aggregation]
    AGGREGATION_MIN: _ClassVar[Aggregation]
    AGGREGATION_MAX: _ClassVar[Aggregation]
    AGGREGATION_COUNT: _ClassVar[Aggregation]
DATA_SCOPE_UNSPECIFIED: DataScope
DATA_SCOPE_INSTANCE: DataScope
DATA_SCOPE_REGION: DataScope
AGGREGATION_UNSPECIFIED: Aggregation
AGGREGATION_AVG: Aggregation
AGGREGATION_SUM: Aggregation
AGGREGATION_MIN: Aggregation
AGGREGATION_MAX: Aggregation
AGGREGATION_COUNT: Aggregation

class IngestRequest(_message.Message):
    __slots__ = ("metric", "labels", "values", "timestamps_unix_nano", "time", "batch_id")
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
    BATCH_ID_FIELD_NUMBER: _ClassVar[int]
    metric: str
    labels: _containers.ScalarMap[str, str]
    values: _containers.RepeatedScalarFieldContainer[float]
    timestamps_unix_nano: _containers.RepeatedScalarFieldContainer[int]
    time: _timestamp_pb2.Timestamp
    batch_id: str
    def __init__(self, metric: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., values: _Optional[_Iterable[float]] = ..., timestamps_unix_nano: _Optional[_Iterable[int]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., batch_id: _Optional[str] = ...) -> None: ...

class IngestResponse(_message.Message):
    __slots__ = ("accepted_batches", "accepted_values", "duplicate_batches")
    ACCEPTED_BATCHES_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_VALUES_FIELD_NUMBER: _ClassVar[int]
    DUPLICATE_BATCHES_FIELD_NUMBER: _ClassVar[int]
    accepted_batches: int
    accepted_values: int
    duplicate_batches: int
    def __init__(self, accepted_batches: _Optional[int] = ..., accepted_values: _Optional[int] = ..., duplicate_batches: _Optional[int] = ...) -> None: ...

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
    __slots__ = ("series", "region_id", "instance_id", "scope", "data_as_of", "privacy", "gaps")
    SERIES_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    DATA_AS_OF_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
    series: _containers.RepeatedCompositeFieldContainer[_summary_pb2.SeriesSummary]
    region_id: str
    instance_id: str
    scope: DataScope
    data_as_of: _timestamp_pb2.Timestamp
    privacy: _summary_pb2.PrivacyInfo
    gaps: _containers.RepeatedCompositeFieldContainer[DataGap]
    def __init__(self, series: _Optional[_Iterable[_Union[_summary_pb2.SeriesSummary, _Mapping]]] = ..., region_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., scope: _Optional[_Union[DataScope, str]] = ..., data_as_of: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., privacy: _Optional[_Union[_summary_pb2.PrivacyInfo, _Mapping]] = ..., gaps: _Optional[_Iterable[_Union[DataGap, _Mapping]]] = ...) -> None: ...

class DataGap(_message.Message):
    __slots__ = ("reason", "start_time", "end_time", "message")
    REASON_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    reason: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    message: str
    def __init__(self, reason: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ...) -> None: ...

class StreamSummariesRequest(_message.Message):
    __slots__ = ("query_id", "query")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    query_id: int
    query: GetSummariesRequest
    def __init__(self, query_id: _Optional[int] = ..., query: _Optional[_Union[GetSummariesRequest, _Mapping]] = ...) -> None: ...

class StreamSummariesResponse(_message.Message):
    __slots__ = ("query_id", "summaries", "error")
    QUERY_ID_FIELD_NUMBER: _ClassVar[int]
    SUMMARIES_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    query_id: int
    summaries: GetSummariesResponse
    error: SummaryQueryError
    def __init__(self, query_id: _Optional[int] = ..., summaries: _Optional[_Union[GetSummariesResponse, _Mapping]] = ..., error: _Optional[_Union[SummaryQueryError, _Mapping]] = ...) -> None: ...

class SummaryQueryError(_message.Message):
    __slots__ = ("code", "message", "field_errors")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    field_errors: _containers.RepeatedCompositeFieldContainer[_governance_pb2.FieldError]
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ..., field_errors: _Optional[_Iterable[_Union[_governance_pb2.FieldError, _Mapping]]] = ...) -> None: ...

class GetNodeInfoRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GetNodeInfoResponse(_message.Message):
    __slots__ = ("region_id", "instance_id", "scope", "window", "retention", "series_count", "window_count", "histogram_scale", "version", "components", "stores", "model", "started_at", "rollup_after", "rollup_window", "gaps")
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
    STORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    ROLLUP_AFTER_FIELD_NUMBER: _ClassVar[int]
    ROLLUP_WINDOW_FIELD_NUMBER: _ClassVar[int]
    GAPS_FIELD_NUMBER: _ClassVar[int]
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
    stores: _containers.RepeatedCompositeFieldContainer[StoreStatus]
    model: ModelInfo
    started_at: _timestamp_pb2.Timestamp
    rollup_after: _duration_pb2.Duration
    rollup_window: _duration_pb2.Duration
    gaps: _containers.RepeatedCompositeFieldContainer[DataGap]
    def __init__(self, region_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., scope: _Optional[_Union[DataScope, str]] = ..., window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., retention: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., series_count: _Optional[int] = ..., window_count: _Optional[int] = ..., histogram_scale: _Optional[int] = ..., version: _Optional[str] = ..., components: _Optional[_Mapping[str, str]] = ..., stores: _Optional[_Iterable[_Union[StoreStatus, _Mapping]]] = ..., model: _Optional[_Union[ModelInfo, _Mapping]] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rollup_after: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., rollup_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., gaps: _Optional[_Iterable[_Union[DataGap, _Mapping]]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "feature_width", "feature_version", "engine")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FEATURE_WIDTH_FIELD_NUMBER: _ClassVar[int]
    FEATURE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    name: str
    feature_width: int
    feature_version: str
    engine: str
    def __init__(self, name: _Optional[str] = ..., feature_width: _Optional[int] = ..., feature_version: _Optional[str] = ..., engine: _Optional[str] = ...) -> None: ...

class StoreStatus(_message.Message):
    __slots__ = ("store", "backend", "requested", "reason", "problem")
    STORE_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    store: str
    backend: str
    requested: str
    reason: str
    problem: str
    def __init__(self, store: _Optional[str] = ..., backend: _Optional[str] = ..., requested: _Optional[str] = ..., reason: _Optional[str] = ..., problem: _Optional[str] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("action",)
    ACTION_FIELD_NUMBER: _ClassVar[int]
    action: _governance_pb2.AgentAction
    def __init__(self, action: _Optional[_Union[_governance_pb2.AgentAction, _Mapping]] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("evaluation",)
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    evaluation: _governance_pb2.ActionEvaluation
    def __init__(self, evaluation: _Optional[_Union[_governance_pb2.ActionEvaluation, _Mapping]] = ...) -> None: ...

class EvaluateStreamRequest(_message.Message):
    __slots__ = ("action", "actions")
    ACTION_FIELD_NUMBER: _ClassVar[int]
    ACTIONS_FIELD_NUMBER: _ClassVar[int]
    action: _governance_pb2.AgentAction
    actions: _containers.RepeatedCompositeFieldContainer[_governance_pb2.AgentAction]
    def __init__(self, action: _Optional[_Union[_governance_pb2.AgentAction, _Mapping]] = ..., actions: _Optional[_Iterable[_Union[_governance_pb2.AgentAction, _Mapping]]] = ...) -> None: ...

class EvaluateStreamResponse(_message.Message):
    __slots__ = ("evaluation", "error", "results")
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    evaluation: _governance_pb2.ActionEvaluation
    error: _governance_pb2.ActionError
    results: _containers.RepeatedCompositeFieldContainer[_governance_pb2.ActionResult]
    def __init__(self, evaluation: _Optional[_Union[_governance_pb2.ActionEvaluation, _Mapping]] = ..., error: _Optional[_Union[_governance_pb2.ActionError, _Mapping]] = ..., results: _Optional[_Iterable[_Union[_governance_pb2.ActionResult, _Mapping]]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("features", "columns")
    FEATURES_FIELD_NUMBER: _ClassVar[int]
    COLUMNS_FIELD_NUMBER: _ClassVar[int]
    features: _containers.RepeatedScalarFieldContainer[float]
    columns: int
    def __init__(self, features: _Optional[_Iterable[float]] = ..., columns: _Optional[int] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("probabilities", "model", "latency")
    PROBABILITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    probabilities: _containers.RepeatedScalarFieldContainer[float]
    model: str
    latency: _duration_pb2.Duration
    def __init__(self, probabilities: _Optional[_Iterable[float]] = ..., model: _Optional[str] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class GetRiskProfileRequest(_message.Message):
    __slots__ = ("agent_id",)
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    def __init__(self, agent_id: _Optional[str] = ...) -> None: ...

class GetRiskProfileResponse(_message.Message):
    __slots__ = ("agent_id", "evaluations", "mean_risk", "max_risk", "decision_counts", "recent", "last_seen")
    class DecisionCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    MEAN_RISK_FIELD_NUMBER: _ClassVar[int]
    MAX_RISK_FIELD_NUMBER: _ClassVar[int]
    DECISION_COUNTS_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    evaluations: int
    mean_risk: float
    max_risk: float
    decision_counts: _containers.ScalarMap[str, int]
    recent: _containers.RepeatedCompositeFieldContainer[_governance_pb2.ProfileEntry]
    last_seen: _timestamp_pb2.Timestamp
    def __init__(self, agent_id: _Optional[str] = ..., evaluations: _Optional[int] = ..., mean_risk: _Optional[float] = ..., max_risk: _Optional[float] = ..., decision_counts: _Optional[_Mapping[str, int]] = ..., recent: _Optional[_Iterable[_Union[_governance_pb2.ProfileEntry, _Mapping]]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class QueryMetricsRequest(_message.Message):
    __slots__ = ("agent_id", "metric", "start_time", "end_time", "limit")
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    metric: str
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    limit: int
    def __init__(self, agent_id: _Optional[str] = ..., metric: _Optional[str] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., limit: _Optional[int] = ...) -> None: ...

class MetricRecord(_message.Message):
    __slots__ = ("time", "agent_id", "metric", "value", "region_id", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    agent_id: str
    metric: str
    value: float
    region_id: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_id: _Optional[str] = ..., metric: _Optional[str] = ..., value: _Optional[float] = ..., region_id: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class QueryMetricsResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[MetricRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[MetricRecord, _Mapping]]] = ...) -> None: ...

class AggregateMetricsRequest(_message.Message):
    __slots__ = ("metric", "aggregation", "bucket", "start_time", "end_time", "agent_id")
    METRIC_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    BUCKET_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    metric: str
    aggregation: Aggregation
    bucket: _duration_pb2.Duration
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    agent_id: str
    def __init__(self, metric: _Optional[str] = ..., aggregation: _Optional[_Union[Aggregation, str]] = ..., bucket: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_id: _Optional[str] = ...) -> None: ...

class MetricBucket(_message.Message):
    __slots__ = ("start_time", "value", "count")
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    start_time: _timestamp_pb2.Timestamp
    value: float
    count: int
    def __init__(self, start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., value: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class AggregateMetricsResponse(_message.Message):
    __slots__ = ("buckets",)
    BUCKETS_FIELD_NUMBER: _ClassVar[int]
    buckets: _containers.RepeatedCompositeFieldContainer[MetricBucket]
    def __init__(self, buckets: _Optional[_Iterable[_Union[MetricBucket, _Mapping]]] = ...) -> None: ...

class SearchAuditRequest(_message.Message):
    __slots__ = ("query", "agent_id", "decision", "start_time", "end_time", "min_risk", "page_size", "page_token")
    QUERY_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    START_TIME_FIELD_NUMBER: _ClassVar[int]
    END_TIME_FIELD_NUMBER: _ClassVar[int]
    MIN_RISK_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    query: str
    agent_id: str
    decision: _governance_pb2.Decision
    start_time: _timestamp_pb2.Timestamp
    end_time: _timestamp_pb2.Timestamp
    min_risk: float
    page_size: int
    page_token: str
    def __init__(self, query: _Optional[str] = ..., agent_id: _Optional[str] = ..., decision: _Optional[_Union[_governance_pb2.Decision, str]] = ..., start_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., end_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., min_risk: _Optional[float] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("id", "time", "agent_id", "action_type", "action_text", "stated_intent", "decision", "risk_score", "region_id")
    ID_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    ACTION_TEXT_FIELD_NUMBER: _ClassVar[int]
    STATED_INTENT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RISK_SCORE_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    time: _timestamp_pb2.Timestamp
    agent_id: str
    action_type: str
    action_text: str
    stated_intent: str
    decision: _governance_pb2.Decision
    risk_score: float
    region_id: str
    def __init__(self, id: _Optional[str] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., agent_id: _Optional[str] = ..., action_type: _Optional[str] = ..., action_text: _Optional[str] = ..., stated_intent: _Optional[str] = ..., decision: _Optional[_Union[_governance_pb2.Decision, str]] = ..., risk_score: _Optional[float] = ..., region_id: _Optional[str] = ...) -> None: ...

class SearchAuditResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...
