"""Time series: GPT4TS-style patching in front of a pretrained transformer, on UCR/UEA and forecasting data."""

from verticals.domains.timeseries.models import PatchTransformer, load_encoder, minilm_path

__all__ = ["PatchTransformer", "load_encoder", "minilm_path"]
