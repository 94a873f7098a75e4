"""Frozen pydantic schemas, one per stage, composed into `RunConfig`."""

from schemas.data import (
    BuiltinSource,
    CsvSource,
    DataConfig,
    NpzSource,
    ParquetSource,
    SplitConfig,
)
from schemas.device import DeviceConfig
from schemas.errors import (
    BundleError,
    ConfigError,
    DataError,
    PipelineError,
    TrainingError,
)
from schemas.evaluate import EvaluateConfig, SaveConfig
from schemas.loading import config_to_yaml, load_config
from schemas.model import (
    CNNConfig,
    CustomModelConfig,
    LinearConfig,
    MLPConfig,
    ModelConfig,
)
from schemas.optim import LossConfig, OptimizerConfig, SchedulerConfig
from schemas.run import RunConfig
from schemas.tracking import TrackingConfig
from schemas.train import EarlyStoppingConfig, TrainConfig

__all__ = [
    "BuiltinSource", "BundleError", "CNNConfig", "ConfigError", "CsvSource", "CustomModelConfig",
    "DataConfig", "DataError", "DeviceConfig", "EarlyStoppingConfig", "EvaluateConfig",
    "LinearConfig", "LossConfig", "MLPConfig", "ModelConfig", "NpzSource", "OptimizerConfig",
    "ParquetSource", "PipelineError", "RunConfig", "SaveConfig", "SchedulerConfig", "SplitConfig",
    "TrackingConfig", "TrainConfig", "TrainingError", "config_to_yaml", "load_config",
]
