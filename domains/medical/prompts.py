"""Class prompts for zero-shot and CLIP-LoRA classification: several templates per class, averaged.

CLIP-style models score an image against a sentence; averaging the normalised text embeddings of a few
phrasings of the same class (prompt ensembling, as in the CLIP paper) is steadier than one sentence.
BiomedCLIP's own zero-shot evaluation uses "this is a photo of {label}".
"""

from __future__ import annotations

from collections.abc import Sequence

#: Templates in BiomedCLIP's style; ``{label}`` is replaced by the class description.
DEFAULT_TEMPLATES: tuple[str, ...] = (
    "this is a photo of {label}",
    "a dermoscopy image of {label}",
    "a close-up clinical photo of {label}",
)

#: Readable descriptions of common dermatology / chest X-ray class names (keys are lower case).
CLASS_DESCRIPTIONS: dict[str, str] = {
    "benign": "a benign skin lesion",
    "malignant": "a malignant skin lesion",
    "mel": "melanoma",
    "nv": "a melanocytic nevus",
    "bcc": "basal cell carcinoma",
    "akiec": "actinic keratosis",
    "bkl": "a benign keratosis",
    "df": "dermatofibroma",
    "vasc": "a vascular lesion",
    "non-neoplastic": "a non-neoplastic skin condition",
    "0": "a normal image",
    "1": "an abnormal image",
}


def describe(class_name: str) -> str:
    """A natural-language description of a class name (the name itself when none is known)."""
    return CLASS_DESCRIPTIONS.get(class_name.lower(), class_name.replace("_", " "))


def build_prompts(class_names: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES) -> list[str]:
    """Prompts ordered class-major: ``[class0/template0, class0/template1, …, class1/template0, …]``."""
    if not class_names:
        raise ValueError("`class_names` is empty; give one name (or description) per class.")
    if not templates:
        raise ValueError("`templates` is empty; give at least one, e.g. 'this is a photo of {label}'.")
    bad = [template for template in templates if "{label}" not in template]
    if bad:
        raise ValueError(f"Every template needs a '{{label}}' placeholder; these lack one: {bad}.")
    return [template.format(label=describe(name)) for name in class_names for template in templates]
