"""Remote sensing: Earth-Adapter (a mixture of frequency adapters) and its controls on frozen ViTs, land-cover
segmentation of multispectral tiles under sensor-artefact shift (a generated set with documented artefacts),
and the real LoveDA, Potsdam, Vaihingen and EuroSAT datasets through torchgeo's own datamodules."""

from verticals.domains.remote_sensing import adapters as _adapters  # noqa: F401  (registers mofa, convpass)
from verticals.domains.remote_sensing import baseline as _baseline  # noqa: F401  (registers its baseline)
from verticals.domains.remote_sensing.adapters import (
    ConvPassConfig,
    MoFAConfig,
    mofa_parameter_count,
    record_router,
    router_weights,
)
from verticals.domains.remote_sensing.models import (
    ViTClassifier,
    ViTSegmenter,
    build_timm_vit,
    tile_vit,
    torchgeo_vit,
)

__all__ = [
    "ConvPassConfig",
    "MoFAConfig",
    "ViTClassifier",
    "ViTSegmenter",
    "build_timm_vit",
    "mofa_parameter_count",
    "record_router",
    "router_weights",
    "tile_vit",
    "torchgeo_vit",
]
