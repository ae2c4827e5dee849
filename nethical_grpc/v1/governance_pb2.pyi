import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_RESTRICT: _ClassVar[Decision]
    DECISION_BLOCK: _ClassVar[Decision]
    DECISION_TERMINATE: _ClassVar[Decision]

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_LOW: _ClassVar[Severity]
    SEVERITY_MEDIUM: _ClassVar[Severity]
    SEVERITY_HIGH: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]
    SEVERITY_EMERGENCY: _ClassVar[Severity]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_RESTRICT: Decision
DECISION_BLOCK: Decision
DECISION_TERMINATE: Decision
SEVERITY_UNSPECIFIED: Severity
SEVERITY_LOW: Severity
SEVERITY_MEDIUM: Severity
SEVERITY_HIGH: Severity
SEVERITY_CRITICAL: Severity
SEVERITY_EMERGENCY: Severity

class AgentAction(_message.Message):
    __slots__ = ("agent_id", "action_text", "action_type", "stated_intent", "context", "request_id")
    class ContextEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_TEXT_FIELD_NUMBER: _ClassVar[int]
    ACTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    STATED_INTENT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    action_text: str
    action_type: str
    stated_intent: str
    context: _containers.ScalarMap[str, str]
    request_id: str
    def __init__(self, agent_id: _Optional[str] = ..., action_text: _Optional[str] = ..., action_type: _Optional[str] = ..., stated_intent: _Optional[str] = ..., context: _Optional[_Mapping[str, str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class Violation(_message.Message):
    __slots__ = ("type", "severity", "confidence", "message", "rule_id")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RULE_ID_FIELD_NUMBER: _ClassVar[int]
    type: str
    severity: Severity
    confidence: float
    message: str
    rule_id: str
    def __init__(self, type: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., confidence: _Optional[float] = ..., message: _Optional[str] = ..., rule_id: _Optional[str] = ...) -> None: ...

class ActionEvaluation(_message.Message):
    __slots__ = ("request_id", "decision", "risk_score", "confidence", "violations", "rule_risk", "model_probability", "latency", "region_id", "instance_id")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RISK_SCORE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    VIOLATIONS_FIELD_NUMBER: _ClassVar[int]
    RULE_RISK_FIELD_NUMBER: _ClassVar[int]
    MODEL_PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    REGION_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    decision: Decision
    risk_score: float
    confidence: float
    violations: _containers.RepeatedCompositeFieldContainer[Violation]
    rule_risk: float
    model_probability: float
    latency: _duration_pb2.Duration
    region_id: str
    instance_id: str
    def __init__(self, request_id: _Optional[str] = ..., decision: _Optional[_Union[Decision, str]] = ..., risk_score: _Optional[float] = ..., confidence: _Optional[float] = ..., violations: _Optional[_Iterable[_Union[Violation, _Mapping]]] = ..., rule_risk: _Optional[float] = ..., model_probability: _Optional[float] = ..., latency: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., region_id: _Optional[str] = ..., instance_id: _Optional[str] = ...) -> None: ...

class FieldError(_message.Message):
    __slots__ = ("field", "description")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    field: str
    description: str
    def __init__(self, field: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ActionError(_message.Message):
    __slots__ = ("request_id", "code", "message", "field_errors")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    FIELD_ERRORS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    code: int
    message: str
    field_errors: _containers.RepeatedCompositeFieldContainer[FieldError]
    def __init__(self, request_id: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ..., field_errors: _Optional[_Iterable[_Union[FieldError, _Mapping]]] = ...) -> None: ...

class ActionResult(_message.Message):
    __slots__ = ("evaluation", "error")
    EVALUATION_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    evaluation: ActionEvaluation
    error: ActionError
    def __init__(self, evaluation: _Optional[_Union[ActionEvaluation, _Mapping]] = ..., error: _Optional[_Union[ActionError, _Mapping]] = ...) -> None: ...

class ProfileEntry(_message.Message):
    __slots__ = ("time", "decision", "risk_score", "request_id", "action_type")
    TIME_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RISK_SCORE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_TYPE_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    decision: Decision
    risk_score: float
    request_id: str
    action_type: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decision: _Optional[_Union[Decision, str]] = ..., risk_score: _Optional[float] = ..., request_id: _Optional[str] = ..., action_type: _Optional[str] = ...) -> None: ...
