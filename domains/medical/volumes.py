"""One labelled scan as every medical segmentation reader returns it, whatever the file layout.

Readers (the Medical Segmentation Decathlon, BTCV/Synapse, ISIC folders, the MNI152 template, the generated
phantoms) turn their files into :class:`LabelledVolume` objects; one slicing datamodule turns those into
2-D training samples. Keeping the two apart means a new layout is one reader, not a new datamodule.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class LabelledVolume:
    """A scan and its label map.

    Args:
        image: ``[D, H, W]`` scalar intensities (a 3-D volume; a 2-D image has ``D == 1``) or ``[D, H, W, 3]``
            RGB (photographs, dermoscopy). Any numeric dtype; intensities are normalised by the datamodule.
        label: ``[D, H, W]`` integer class per voxel (0 = background).
        spacing: voxel size in mm along ``(D, H, W)``; ``(1.0, 1.0, 1.0)`` for images without one.
        case_id: the scan's name in its dataset (file stem, patient id): reports and errors name it.
        attributes: patient or acquisition metadata (``sex``, ``site``, ``scanner`` …) used as groups.
    """

    image: np.ndarray
    label: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    case_id: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        spatial = self.image.shape[:3]
        if self.image.ndim not in (3, 4) or (self.image.ndim == 4 and self.image.shape[3] != 3):
            raise ValueError(
                f"Case {self.case_id!r}: the image must be [D, H, W] or [D, H, W, 3] (RGB), got shape "
                f"{tuple(self.image.shape)}; add a leading axis of size 1 for a 2-D image."
            )
        if tuple(self.label.shape) != tuple(spatial):
            raise ValueError(
                f"Case {self.case_id!r}: image {tuple(self.image.shape)} and label {tuple(self.label.shape)} "
                "differ in shape; they must cover the same voxels (resample the label onto the image grid)."
            )
        if np.issubdtype(self.label.dtype, np.floating):
            if not np.all(np.equal(np.mod(self.label, 1), 0)):
                raise ValueError(
                    f"Case {self.case_id!r}: the label holds non-integer values; a label map holds class indices."
                )
            self.label = self.label.astype(np.int64)
        if len(self.spacing) != 3 or any(float(value) <= 0 for value in self.spacing):
            raise ValueError(
                f"Case {self.case_id!r}: spacing must be three positive voxel sizes (mm), got {self.spacing}."
            )
        self.spacing = tuple(float(value) for value in self.spacing)

    @property
    def num_slices(self) -> int:
        return int(self.image.shape[0])
