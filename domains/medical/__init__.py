"""Medical imaging: BiomedCLIP / EfficientNet-Lite0 classifiers, image-manifest datasets with sensitive
attributes (HAM10000/ISIC, Fitzpatrick17k, CheXpert) and a generated dermatology set with a planted gap."""

from verticals.domains.medical.clip import BIOMEDCLIP_HUB_ID, CLIPClassifier, load_open_clip, write_tiny_clip
from verticals.domains.medical.efficientnet import efficientnet_lite0, remap_lite0_state_dict
from verticals.domains.medical.models import EfficientNetClassifier

__all__ = [
    "BIOMEDCLIP_HUB_ID",
    "CLIPClassifier",
    "EfficientNetClassifier",
    "efficientnet_lite0",
    "load_open_clip",
    "remap_lite0_state_dict",
    "write_tiny_clip",
]
