"""Medical imaging: BiomedCLIP / EfficientNet-Lite0 classifiers, image-manifest datasets with sensitive
attributes (HAM10000/ISIC, Fitzpatrick17k, CheXpert) and a generated dermatology set with a planted gap; and
SAM-family segmentation (LiteMedSAM's real weights, segment-anything ViTs) on slices of volumes (the MNI152
template, generated phantoms, Medical Segmentation Decathlon, BTCV/Synapse and ISIC layouts)."""

from verticals.domains.medical import baseline as _baseline  # noqa: F401  (registers its baselines)
from verticals.domains.medical.clip import BIOMEDCLIP_HUB_ID, CLIPClassifier, load_open_clip, write_tiny_clip
from verticals.domains.medical.efficientnet import efficientnet_lite0, remap_lite0_state_dict
from verticals.domains.medical.models import EfficientNetClassifier
from verticals.domains.medical.sam import SamParts, SamSegmenter, build_litemedsam, split_fused_qkv
from verticals.domains.medical.sam_prompts import check_prompts, prompts_from_label
from verticals.domains.medical.sam_vit import build_sam_vit, write_tiny_sam_checkpoint
from verticals.domains.medical.segmentation_data import (
    MNI152TissueDataModule,
    PhantomSegmentationDataModule,
    SliceSegmentationDataModule,
    volume_dice,
)
from verticals.domains.medical.volumes import LabelledVolume

__all__ = [
    "BIOMEDCLIP_HUB_ID",
    "CLIPClassifier",
    "EfficientNetClassifier",
    "LabelledVolume",
    "MNI152TissueDataModule",
    "PhantomSegmentationDataModule",
    "SamParts",
    "SamSegmenter",
    "SliceSegmentationDataModule",
    "build_litemedsam",
    "build_sam_vit",
    "check_prompts",
    "efficientnet_lite0",
    "load_open_clip",
    "prompts_from_label",
    "remap_lite0_state_dict",
    "split_fused_qkv",
    "volume_dice",
    "write_tiny_clip",
    "write_tiny_sam_checkpoint",
]
