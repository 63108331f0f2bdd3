"""instil: instance-incremental learning for deployed image classifiers."""

__version__ = "0.1.0"
