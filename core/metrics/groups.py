"""Sensitive-attribute groups: encoding values as codes, and intersectional groups (sex × age band)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from verticals.core.metrics._arrays import to_numpy

INTERSECTION_SEPARATOR = " & "


def encode_groups(values: Any, names: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Codes ``0..G-1`` and the group names for one attribute's values.

    ``names`` fixes the order (and keeps groups absent from ``values``); otherwise the sorted distinct
    values are the groups. Integer codes with ``names`` are taken as indices into ``names``.

    Args:
        values: ``[N]`` group labels (strings, numbers) or integer codes.
        names: the groups in code order; None: the sorted distinct values.
    """
    array = to_numpy(values, name="groups")
    if array.ndim != 1:
        raise ValueError(f"Group values must be a vector, got shape {array.shape}.")
    if names is not None:
        names = [str(name) for name in names]
        if np.issubdtype(array.dtype, np.integer):
            bad = array[(array < 0) | (array >= len(names))]
            if bad.size:
                raise ValueError(
                    f"Group code {int(bad[0])} is outside 0..{len(names) - 1} for groups {names}; pass the "
                    "full list of group names."
                )
            return array.astype(np.int64), names
        lookup = {name: index for index, name in enumerate(names)}
        strings = array.astype(str)
        unknown = sorted(set(strings) - set(lookup))
        if unknown:
            raise ValueError(f"Group value(s) {unknown[:5]} are not among the given group names {names}.")
        return np.array([lookup[value] for value in strings], dtype=np.int64), names
    distinct, codes = np.unique(array, return_inverse=True)
    return codes.astype(np.int64), [str(value) for value in distinct]


def intersect(groups: Mapping[str, Any]) -> np.ndarray:
    """Intersectional group labels such as ``"sex=F & age=60+"``, one per sample, attributes in order.

    Args:
        groups: attribute -> its ``[N]`` values, all of one length.
    """
    if not groups:
        raise ValueError("`groups` is empty: pass at least one attribute, e.g. {'sex': sex_values}.")
    columns = {name: to_numpy(values, name=name).astype(str) for name, values in groups.items()}
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"Every attribute needs one value per sample; got lengths {lengths}.")
    parts = [np.char.add(f"{name}=", values) for name, values in columns.items()]
    labels = parts[0]
    for part in parts[1:]:
        labels = np.char.add(np.char.add(labels, INTERSECTION_SEPARATOR), part)
    return labels.astype(object).astype(str)


def decode_group_matrix(
    groups: Any, attributes: Sequence[str], names: Mapping[str, Sequence[str]] | None = None
) -> dict[str, np.ndarray]:
    """``{attribute: values}`` from a ``[N, A]`` code matrix (a batch's ``"group"``) and the category names.

    Args:
        groups: ``[N, A]`` integer codes (``[N]`` for one attribute).
        attributes: the attribute of each column (a datamodule's ``group_attributes``).
        names: attribute -> its categories in code order (``group_names``); an attribute without names
            keeps its codes, as strings.
    """
    matrix = to_numpy(groups, name="groups")
    if matrix.ndim == 1:
        matrix = matrix[:, None]
    if matrix.ndim != 2 or matrix.shape[1] != len(attributes):
        raise ValueError(
            f"Expected a [N, {len(attributes)}] group matrix for attributes {list(attributes)}, got shape "
            f"{matrix.shape}."
        )
    decoded: dict[str, np.ndarray] = {}
    for column, attribute in enumerate(attributes):
        codes = matrix[:, column].astype(np.int64)
        labels = list((names or {}).get(attribute) or [])
        if labels:
            codes, labels = encode_groups(codes, labels)
            decoded[attribute] = np.asarray(labels, dtype=str)[codes]
        else:
            decoded[attribute] = codes.astype(str)
    return decoded
