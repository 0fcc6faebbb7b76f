"""awdlstm: the AWD-LSTM language model of Merity, Keskar and Socher (ICLR 2018) on
current PyTorch."""

__version__ = "0.1.0"

from .api import LanguageModel
from .config import Config, DataConfig, ModelConfig, OptimConfig, TrainConfig
from .model import AWDLSTM

__all__ = ["AWDLSTM", "Config", "LanguageModel", "DataConfig", "ModelConfig", "OptimConfig", "TrainConfig", "__version__"]
