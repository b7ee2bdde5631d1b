"""Read image-classification manifests with sensitive attributes, in the layouts datasets ship in.

Every reader returns one table with the same columns — ``path`` (absolute image file), ``label`` (str),
``patient`` (str, or the row's own id when the dataset has none), one column per sensitive attribute
(str categories), ``line`` (the row's line in the CSV, for error messages) and ``split`` when the
manifest fixes one — the standard table of :class:`verticals.core.manifest_data.ManifestDataModule`,
so the datamodule never needs to know which dataset it reads.  Problems are reported up front and by name: a missing column, a missing image
file (row and id), an attribute value outside the known categories (row, column and value).

Layouts:
    ``ham10000``   ``HAM10000_metadata.csv`` (``lesion_id, image_id, dx, dx_type, age, sex, localization``),
                   images ``<image_id>.jpg`` anywhere under the root (``HAM10000_images_part_1/2``).
                   Splits group images of one lesion (``lesion_id``): HAM has no patient id.
    ``isic2020``   ``ISIC_2020_Training_GroundTruth.csv`` (``image_name, patient_id, sex, age_approx,
                   anatom_site_general_challenge, diagnosis, benign_malignant, target``).
    ``fitzpatrick17k`` ``fitzpatrick17k.csv`` (``md5hash, fitzpatrick_scale, fitzpatrick_centaur, label,
                   nine_partition_label, three_partition_label, qc, url, url_alphanum``), images
                   ``<md5hash>.jpg``; scale ``-1`` means unknown.
    ``chexpert``   ``train.csv``/``valid.csv`` (``Path, Sex, Age, Frontal/Lateral, AP/PA`` + 14 findings
                   with 1 / 0 / -1 (uncertain) / blank); ``Path`` is relative to the folder *holding*
                   ``CheXpert-v1.0[-small]/``; the patient id is the ``patientNNNNN`` path component.
    ``generic``    any CSV with an image column (a path relative to the root), a label column and
                   attribute columns, optionally ``patient`` and ``split``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from verticals.core.image_io import PIL_SUFFIXES, supported_suffixes
from verticals.core.manifest_data import ManifestError

MISSING_VALUES = {"", "nan", "none", "unknown", "unk", "-1", "-1.0"}
SEX_VALUES = {"female": "female", "f": "female", "male": "male", "m": "male"}
#: HAM10000 diagnoses usually counted as malignant for a binary task.
HAM10000_MALIGNANT = ("mel", "bcc", "akiec")
CHEXPERT_FINDINGS = (
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Opacity",
    "Lung Lesion",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
)


@dataclass(frozen=True)
class Layout:
    """How one dataset's CSV maps onto the standard table."""

    name: str
    image_column: str
    default_label: str
    attribute_columns: dict[str, str]  # standard attribute name -> CSV column
    patient_column: str | None = None
    find_by_stem: bool = False  # images are named <id>.<ext> somewhere under the root
    patient_from_path: str | None = None  # regex with one group, applied to the image path
    default_attributes: tuple[str, ...] = ()
    extra_required: tuple[str, ...] = field(default_factory=tuple)


LAYOUTS: dict[str, Layout] = {
    "ham10000": Layout(
        "ham10000",
        "image_id",
        "dx",
        {"sex": "sex", "age": "age"},
        patient_column="lesion_id",
        find_by_stem=True,
        default_attributes=("sex", "age_band"),
    ),
    "isic2020": Layout(
        "isic2020",
        "image_name",
        "benign_malignant",
        {"sex": "sex", "age": "age_approx"},
        patient_column="patient_id",
        find_by_stem=True,
        default_attributes=("sex", "age_band"),
    ),
    "fitzpatrick17k": Layout(
        "fitzpatrick17k",
        "md5hash",
        "three_partition_label",
        {"fitzpatrick": "fitzpatrick_scale"},
        find_by_stem=True,
        default_attributes=("skin_type",),
    ),
    "chexpert": Layout(
        "chexpert",
        "Path",
        "Pleural Effusion",
        {"sex": "Sex", "age": "Age"},
        patient_from_path=r"(patient\d+)",
        default_attributes=("sex", "age_band"),
    ),
    "generic": Layout(
        "generic",
        "image",
        "label",
        {},
        patient_column="patient",
        default_attributes=(),
    ),
}

#: Fitzpatrick types grouped as in most fairness studies (I–II light, III–IV medium, V–VI dark).
SKIN_TYPE_GROUPS = {"1": "I-II", "2": "I-II", "3": "III-IV", "4": "III-IV", "5": "V-VI", "6": "V-VI"}


def age_band(age: float, edges: Sequence[int]) -> str:
    """``age_band(45, [40, 60]) == "40-59"``; bands are ``<e0``, ``e0-(e1-1)``, …, ``e_last+``."""
    edges = sorted(int(edge) for edge in edges)
    if age < edges[0]:
        return f"<{edges[0]}"
    for low, high in zip(edges, edges[1:]):
        if low <= age < high:
            return f"{low}-{high - 1}"
    return f"{edges[-1]}+"


def age_band_names(edges: Sequence[int]) -> list[str]:
    edges = sorted(int(edge) for edge in edges)
    return [f"<{edges[0]}", *[f"{low}-{high - 1}" for low, high in zip(edges, edges[1:])], f"{edges[-1]}+"]


def _is_missing(value: object) -> bool:
    return (
        value is None
        or (isinstance(value, float) and np.isnan(value))
        or str(value).strip().lower() in MISSING_VALUES
    )


def read_manifest(
    manifest: str | Path,
    *,
    layout: str = "generic",
    image_root: str | Path | None = None,
    label_column: str | None = None,
    label_map: dict[str, str] | None = None,
    attributes: Sequence[str] | None = None,
    attribute_columns: dict[str, str] | None = None,
    age_bands: Sequence[int] = (40, 60),
    missing_attributes: str = "error",
    uncertain_labels: str = "drop",
) -> pd.DataFrame:
    """The standard table (``path, label, patient, <attributes>[, split]``) of a manifest CSV.

    ``attributes`` are standard names: ``sex``, ``age_band``, ``skin_type`` (Fitzpatrick I-II / III-IV /
    V-VI), ``fitzpatrick`` (1–6), or any column of a generic manifest.  ``label_map`` maps raw labels to
    task labels (e.g. HAM ``dx`` → benign/malignant); a raw label it doesn't list is an error.
    ``missing_attributes``: ``"error"`` (default) or ``"drop"`` rows with a missing attribute value.
    ``uncertain_labels`` (CheXpert ``-1``): ``"drop"``, ``"positive"`` (U-Ones) or ``"negative"`` (U-Zeros).
    """
    if layout not in LAYOUTS:
        raise ManifestError(f"Unknown manifest layout {layout!r}; choose one of {sorted(LAYOUTS)}.")
    if missing_attributes not in ("error", "drop"):
        raise ManifestError(f"`missing_attributes` must be 'error' or 'drop', got {missing_attributes!r}.")
    if uncertain_labels not in ("drop", "positive", "negative"):
        raise ManifestError(
            f"`uncertain_labels` must be 'drop', 'positive' or 'negative', got {uncertain_labels!r}."
        )
    spec = LAYOUTS[layout]
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"Manifest {str(manifest)!r} does not exist.")
    root = Path(image_root) if image_root is not None else manifest.parent
    table = pd.read_csv(manifest, dtype=str, keep_default_na=False)
    label_column = label_column or spec.default_label
    attributes = list(spec.default_attributes if attributes is None else attributes)
    columns = {**spec.attribute_columns, **(attribute_columns or {})}
    _require_columns(table, [spec.image_column, label_column], manifest)

    out = pd.DataFrame(index=table.index)
    out["line"] = table.index + 2
    out["path"] = _image_paths(table[spec.image_column], root, spec, manifest)
    out["label"] = _labels(table[label_column], label_column, label_map, uncertain_labels, manifest)
    out["patient"] = _patients(table, spec, out["path"])
    for attribute in attributes:
        out[attribute] = _attribute(table, attribute, columns, age_bands, manifest)
    if "split" in table.columns:
        out["split"] = table["split"].str.strip().str.lower()
        bad = sorted(set(out["split"]) - {"train", "val", "test"})
        if bad:
            raise ManifestError(f"{manifest.name}: column 'split' has values {bad}; use train, val or test.")
    out = out[out["label"].notna()]
    missing = out[attributes].isna().any(axis=1) if attributes else pd.Series(False, index=out.index)
    if missing.any():
        row = int(missing.idxmax())
        column = next(a for a in attributes if pd.isna(out.at[row, a]))
        if missing_attributes == "error":
            raise ManifestError(
                f"{manifest.name}: row {row + 2} (line in the CSV) has no value for attribute {column!r} "
                f"(column {columns.get(column.replace('_band', ''), column)!r}); {int(missing.sum())} rows in "
                "all. Fill them, or pass missing_attributes='drop' to leave those rows out."
            )
        out = out[~missing]
    if out.empty:
        raise ManifestError(
            f"{manifest.name}: no usable rows left after removing unlabelled / incomplete ones."
        )
    return out.reset_index(drop=True)


def _require_columns(table: pd.DataFrame, required: Sequence[str], manifest: Path) -> None:
    absent = [column for column in required if column not in table.columns]
    if absent:
        raise ManifestError(
            f"{manifest.name}: column(s) {absent} not found; the manifest has columns {list(table.columns)}. "
            "Check the layout and `label_column`."
        )


def _image_paths(ids: pd.Series, root: Path, spec: Layout, manifest: Path) -> list[str]:
    if not root.is_dir():
        raise FileNotFoundError(f"Image root {str(root)!r} of manifest {manifest.name} is not a directory.")
    index: dict[str, Path] = {}
    # Photographs and radiographs: the 2-D image suffixes this environment decodes.
    suffixes = [suffix for suffix in supported_suffixes() if suffix in PIL_SUFFIXES]
    if spec.find_by_stem:
        for path in root.rglob("*"):
            if path.suffix.lower() in suffixes:
                index.setdefault(path.stem, path)
    paths: list[str] = []
    for row, value in ids.items():
        value = value.strip()
        if spec.find_by_stem:
            found = index.get(Path(value).stem)
            looked = f"{value}.<{'|'.join(s.lstrip('.') for s in suffixes)}> under {root}"
        else:
            candidates = [root / value, root / Path(*Path(value).parts[1:])] if value else []
            found = next((c for c in candidates if c.is_file()), None)
            looked = " or ".join(str(c) for c in candidates) or "an empty path"
        if found is None:
            raise ManifestError(
                f"{manifest.name}: row {row + 2} ({spec.image_column}={value!r}): image file not found "
                f"(looked for {looked}). Fix `image_root` or drop the row."
            )
        paths.append(str(found.resolve()))
    return paths


def _labels(
    raw: pd.Series, column: str, label_map: dict[str, str] | None, uncertain: str, manifest: Path
) -> pd.Series:
    values = raw.str.strip()
    if column in CHEXPERT_FINDINGS:
        # A CheXpert finding: 1 positive, 0 negative, -1 uncertain, blank = not mentioned (negative).
        bad = ~values.isin(["1", "1.0", "0", "0.0", "-1", "-1.0", ""])
        if bad.any():
            row = int(bad.idxmax())
            raise ManifestError(
                f"{manifest.name}: row {row + 2}, finding column {column!r} has {values[row]!r}; "
                "expected 1, 0, -1 (uncertain) or blank."
            )
        numeric = values.replace("", "0").astype(float)
        mapped = numeric.map(
            {1.0: "1", 0.0: "0", -1.0: {"positive": "1", "negative": "0", "drop": None}[uncertain]}
        )
        values = mapped
    else:
        empty = values == ""
        if empty.any():
            row = int(empty.idxmax())
            raise ManifestError(f"{manifest.name}: row {row + 2} has an empty label in column {column!r}.")
    if label_map is not None:
        unmapped = sorted({v for v in values.dropna() if v not in label_map})
        if unmapped:
            raise ManifestError(
                f"{manifest.name}: labels {unmapped} in column {column!r} are not in `label_map` "
                f"(which maps {sorted(label_map)}); add them."
            )
        values = values.map(lambda v: label_map.get(v) if isinstance(v, str) else None)
    return values


def _patients(table: pd.DataFrame, spec: Layout, paths: pd.Series) -> pd.Series:
    if spec.patient_column and spec.patient_column in table.columns:
        return table[spec.patient_column].str.strip().where(lambda s: s != "", table.index.astype(str))
    if spec.patient_from_path:
        pattern = re.compile(spec.patient_from_path)
        ids = [
            match.group(1) if (match := pattern.search(str(v))) else str(i)
            for i, v in table[spec.image_column].items()
        ]
        return pd.Series(ids, index=table.index)
    return pd.Series(table.index.astype(str), index=table.index)


def _attribute(
    table: pd.DataFrame, attribute: str, columns: dict[str, str], edges: Sequence[int], manifest: Path
) -> pd.Series:
    converters: dict[str, tuple[str, Callable[[str], str | None]]] = {
        "sex": (columns.get("sex", "sex"), lambda v: SEX_VALUES.get(v.strip().lower(), "?")),
        "age_band": (columns.get("age", "age"), lambda v: age_band(float(v), edges)),
        "skin_type": (
            columns.get("fitzpatrick", "fitzpatrick_scale"),
            lambda v: SKIN_TYPE_GROUPS.get(_int_text(v), "?"),
        ),
        "fitzpatrick": (
            columns.get("fitzpatrick", "fitzpatrick_scale"),
            lambda v: _int_text(v) if _int_text(v) in SKIN_TYPE_GROUPS else "?",
        ),
    }
    column, convert = converters.get(attribute, (columns.get(attribute, attribute), lambda v: v.strip()))
    if column not in table.columns:
        raise ManifestError(
            f"{manifest.name}: attribute {attribute!r} needs column {column!r}, which is not in the manifest "
            f"(columns: {list(table.columns)}). Map it with `attribute_columns` or drop the attribute."
        )
    values: list[str | None] = []
    for row, raw in table[column].items():
        if _is_missing(raw):
            values.append(None)
            continue
        try:
            value = convert(raw)
        except ValueError:
            value = "?"
        if value == "?":
            raise ManifestError(
                f"{manifest.name}: row {row + 2}, column {column!r}: unknown value {raw!r} for attribute "
                f"{attribute!r}{_expected(attribute)}. Fix the value or mark it missing (blank)."
            )
        values.append(value)
    return pd.Series(values, index=table.index, dtype=object)


def _int_text(value: str) -> str:
    return str(int(float(value)))


def _expected(attribute: str) -> str:
    return {
        "sex": " (expected male/female, M/F)",
        "age_band": " (expected a number of years)",
        "skin_type": " (expected a Fitzpatrick type 1-6)",
        "fitzpatrick": " (expected a Fitzpatrick type 1-6)",
    }.get(attribute, "")


def attribute_categories(
    table: pd.DataFrame, attribute: str, age_bands: Sequence[int] = (40, 60)
) -> list[str]:
    """Categories of an attribute present in ``table``, in a meaningful order (age bands ascending, …)."""
    present = {str(v) for v in table[attribute].dropna()}
    if attribute == "age_band":
        order = age_band_names(age_bands)
    elif attribute == "skin_type":
        order = ["I-II", "III-IV", "V-VI"]
    elif attribute == "fitzpatrick":
        order = [str(i) for i in range(1, 7)]
    else:
        order = sorted(present)
    return [name for name in order if name in present]
