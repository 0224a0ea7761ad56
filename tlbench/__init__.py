"""tlbench: benchmark transfer-learning strategies across backbones and datasets."""

__version__ = "0.2.0"
