"""Training library behind `train/pretrain.py`: data reading, optimizer groups, schedules, checkpoints, the loop.

Imported lazily by the scripts (it pulls in accelerate); `import mmae_hf` does not import it.
"""

from .data import (
    DatasetLoadError,
    EpochBatchSampler,
    FlowBatchReader,
    find_preprocessor_config,
    load_pretraining_split,
)
from .pretraining import (
    CheckpointError,
    NonFiniteLossError,
    PretrainingArguments,
    PretrainingResult,
    load_model_config,
    optimizer_parameter_groups,
    parse_config_overrides,
    run_pretraining,
    warmup_cosine_factor,
)

__all__ = [
    "CheckpointError",
    "DatasetLoadError",
    "EpochBatchSampler",
    "FlowBatchReader",
    "NonFiniteLossError",
    "PretrainingArguments",
    "PretrainingResult",
    "find_preprocessor_config",
    "load_model_config",
    "load_pretraining_split",
    "optimizer_parameter_groups",
    "parse_config_overrides",
    "run_pretraining",
    "warmup_cosine_factor",
]
