"""The training engine: the loop, evaluation, the base-model cache and the IIL protocol."""
