from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class InitRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InitResponse(_message.Message):
    __slots__ = ("kv_slots", "vocab_size", "max_context", "max_batch_size", "rank", "tp", "device", "dtype", "kernels", "model_type", "architecture")
    KV_SLOTS_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_CONTEXT_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TP_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    KERNELS_FIELD_NUMBER: _ClassVar[int]
    MODEL_TYPE_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    kv_slots: int
    vocab_size: int
    max_context: int
    max_batch_size: int
    rank: int
    tp: int
    device: str
    dtype: str
    kernels: str
    model_type: str
    architecture: str
    def __init__(self, kv_slots: _Optional[int] = ..., vocab_size: _Optional[int] = ..., max_context: _Optional[int] = ..., max_batch_size: _Optional[int] = ..., rank: _Optional[int] = ..., tp: _Optional[int] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., kernels: _Optional[str] = ..., model_type: _Optional[str] = ..., architecture: _Optional[str] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty", "frequency_penalty", "presence_penalty", "seed", "suppress_until", "suppress_token_ids", "top_logprobs", "bias_token_ids", "bias_values")
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    REPETITION_PENALTY_FIELD_NUMBER: _ClassVar[int]
    FREQUENCY_PENALTY_FIELD_NUMBER: _ClassVar[int]
    PRESENCE_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SUPPRESS_UNTIL_FIELD_NUMBER: _ClassVar[int]
    SUPPRESS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    BIAS_TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BIAS_VALUES_FIELD_NUMBER: _ClassVar[int]
    temperature: float
    top_k: int
    top_p: float
    min_p: float
    repetition_penalty: float
    frequency_penalty: float
    presence_penalty: float
    seed: int
    suppress_until: int
    suppress_token_ids: _containers.RepeatedScalarFieldContainer[int]
    top_logprobs: int
    bias_token_ids: _containers.RepeatedScalarFieldContainer[int]
    bias_values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., min_p: _Optional[float] = ..., repetition_penalty: _Optional[float] = ..., frequency_penalty: _Optional[float] = ..., presence_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., suppress_until: _Optional[int] = ..., suppress_token_ids: _Optional[_Iterable[int]] = ..., top_logprobs: _Optional[int] = ..., bias_token_ids: _Optional[_Iterable[int]] = ..., bias_values: _Optional[_Iterable[float]] = ...) -> None: ...

class Extend(_message.Message):
    __slots__ = ("rid", "token_ids", "slots", "prefix_slots", "prefix_len", "sample", "sampling", "is_new", "prompt_ids", "generated_ids", "score", "score_next_token", "score_top_n")
    RID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_SLOTS_FIELD_NUMBER: _ClassVar[int]
    PREFIX_LEN_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    IS_NEW_FIELD_NUMBER: _ClassVar[int]
    PROMPT_IDS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORE_NEXT_TOKEN_FIELD_NUMBER: _ClassVar[int]
    SCORE_TOP_N_FIELD_NUMBER: _ClassVar[int]
    rid: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    slots: _containers.RepeatedScalarFieldContainer[int]
    prefix_slots: _containers.RepeatedScalarFieldContainer[int]
    prefix_len: int
    sample: bool
    sampling: Sampling
    is_new: bool
    prompt_ids: _containers.RepeatedScalarFieldContainer[int]
    generated_ids: _containers.RepeatedScalarFieldContainer[int]
    score: bool
    score_next_token: int
    score_top_n: int
    def __init__(self, rid: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., slots: _Optional[_Iterable[int]] = ..., prefix_slots: _Optional[_Iterable[int]] = ..., prefix_len: _Optional[int] = ..., sample: _Optional[bool] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., is_new: _Optional[bool] = ..., prompt_ids: _Optional[_Iterable[int]] = ..., generated_ids: _Optional[_Iterable[int]] = ..., score: _Optional[bool] = ..., score_next_token: _Optional[int] = ..., score_top_n: _Optional[int] = ...) -> None: ...

class StepRequest(_message.Message):
    __slots__ = ("step_id", "extends", "release", "decode_rids", "decode_slots", "token_masks")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    EXTENDS_FIELD_NUMBER: _ClassVar[int]
    RELEASE_FIELD_NUMBER: _ClassVar[int]
    DECODE_RIDS_FIELD_NUMBER: _ClassVar[int]
    DECODE_SLOTS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_MASKS_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    extends: _containers.RepeatedCompositeFieldContainer[Extend]
    release: _containers.RepeatedScalarFieldContainer[int]
    decode_rids: _containers.RepeatedScalarFieldContainer[int]
    decode_slots: _containers.RepeatedScalarFieldContainer[int]
    token_masks: _containers.RepeatedCompositeFieldContainer[TokenMask]
    def __init__(self, step_id: _Optional[int] = ..., extends: _Optional[_Iterable[_Union[Extend, _Mapping]]] = ..., release: _Optional[_Iterable[int]] = ..., decode_rids: _Optional[_Iterable[int]] = ..., decode_slots: _Optional[_Iterable[int]] = ..., token_masks: _Optional[_Iterable[_Union[TokenMask, _Mapping]]] = ...) -> None: ...

class TokenMask(_message.Message):
    __slots__ = ("rid", "allowed", "same_as")
    RID_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    SAME_AS_FIELD_NUMBER: _ClassVar[int]
    rid: int
    allowed: bytes
    same_as: int
    def __init__(self, rid: _Optional[int] = ..., allowed: _Optional[bytes] = ..., same_as: _Optional[int] = ...) -> None: ...

class StepResponse(_message.Message):
    __slots__ = ("step_id", "rids", "token_ids", "logprobs", "top_n", "top_ids", "top_logprobs", "score_rids", "score_first_positions", "score_counts", "score_logprobs", "score_top_n", "score_top_ids", "score_top_logprobs", "forward_ms", "gpu_ms", "gpu_gap_ms")
    STEP_ID_FIELD_NUMBER: _ClassVar[int]
    RIDS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    TOP_N_FIELD_NUMBER: _ClassVar[int]
    TOP_IDS_FIELD_NUMBER: _ClassVar[int]
    TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SCORE_RIDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIRST_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    SCORE_COUNTS_FIELD_NUMBER: _ClassVar[int]
    SCORE_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    SCORE_TOP_N_FIELD_NUMBER: _ClassVar[int]
    SCORE_TOP_IDS_FIELD_NUMBER: _ClassVar[int]
    SCORE_TOP_LOGPROBS_FIELD_NUMBER: _ClassVar[int]
    FORWARD_MS_FIELD_NUMBER: _ClassVar[int]
    GPU_MS_FIELD_NUMBER: _ClassVar[int]
    GPU_GAP_MS_FIELD_NUMBER: _ClassVar[int]
    step_id: int
    rids: _containers.RepeatedScalarFieldContainer[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    logprobs: _containers.RepeatedScalarFieldContainer[float]
    top_n: int
    top_ids: _containers.RepeatedScalarFieldContainer[int]
    top_logprobs: _containers.RepeatedScalarFieldContainer[float]
    score_rids: _containers.RepeatedScalarFieldContainer[int]
    score_first_positions: _containers.RepeatedScalarFieldContainer[int]
    score_counts: _containers.RepeatedScalarFieldContainer[int]
    score_logprobs: _containers.RepeatedScalarFieldContainer[float]
    score_top_n: int
    score_top_ids: _containers.RepeatedScalarFieldContainer[int]
    score_top_logprobs: _containers.RepeatedScalarFieldContainer[float]
    forward_ms: float
    gpu_ms: float
    gpu_gap_ms: float
    def __init__(self, step_id: _Optional[int] = ..., rids: _Optional[_Iterable[int]] = ..., token_ids: _Optional[_Iterable[int]] = ..., logprobs: _Optional[_Iterable[float]] = ..., top_n: _Optional[int] = ..., top_ids: _Optional[_Iterable[int]] = ..., top_logprobs: _Optional[_Iterable[float]] = ..., score_rids: _Optional[_Iterable[int]] = ..., score_first_positions: _Optional[_Iterable[int]] = ..., score_counts: _Optional[_Iterable[int]] = ..., score_logprobs: _Optional[_Iterable[float]] = ..., score_top_n: _Optional[int] = ..., score_top_ids: _Optional[_Iterable[int]] = ..., score_top_logprobs: _Optional[_Iterable[float]] = ..., forward_ms: _Optional[float] = ..., gpu_ms: _Optional[float] = ..., gpu_gap_ms: _Optional[float] = ...) -> None: ...

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("ready", "message")
    READY_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ready: bool
    message: str
    def __init__(self, ready: _Optional[bool] = ..., message: _Optional[str] = ...) -> None: ...
