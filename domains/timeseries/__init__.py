"""Time series: GPT4TS-style patching in front of a pretrained transformer, on UCR/UEA and forecasting data."""

from verticals.domains.timeseries import baseline as _baseline  # noqa: F401  (registers its baselines)
from verticals.domains.timeseries.models import PatchTransformer, load_encoder, minilm_path

__all__ = ["PatchTransformer", "load_encoder", "minilm_path"]
