"""Dataset cards (``datasets_cards/*.md``) in the Hugging Face dataset-card format, and true to the code.

Each card opens with YAML front matter: ``pretty_name``, ``license`` (a Hub licence id; ``other`` with
``license_name`` and ``license_details`` when the data have no standard licence), ``task_categories``,
``size_categories``, ``source_datasets``, ``tags``, and ``verticals_defaults``: what the card quotes from the
code, in a form a test can check —

- ``signatures``: ``{dotted callable: {parameter: default}}``, compared with ``inspect.signature``;
- ``constants``: ``{dotted attribute: value}``, compared with the attribute (tuples as lists; the path may go on
  into a mapping's keys and an object's attributes);
- ``configs``: ``{packaged config: {class_path, init_args}}``, compared with the config's ``data`` section;
- ``splits``: ``{dotted datamodule: {init: kwargs, train: n, val: n, test: n}}``, measured (cheap sets only).

The body is checked too: every inline quote of a listed callable written as a signature (``Name(a=1, b=2)``,
no positional literal) and every inline ``name=value`` said to be the default ("the default `name=value`",
"`name=value` (default …") must agree with the code. The
body needs a BibTeX block under a citation heading, "Uses" and "Out-of-scope uses" sections and, for cards
tagged ``medical``, "Personal and sensitive information".
"""

from __future__ import annotations

import ast
import importlib
import inspect
import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CARDS = sorted((ROOT / "datasets_cards").glob("*.md"))

#: Hub licence ids the cards may use (https://huggingface.co/docs/hub/repositories-licenses).
LICENSES = {
    "apache-2.0", "mit", "bsd-3-clause", "gpl-3.0", "cc0-1.0", "cc-by-4.0", "cc-by-sa-4.0", "cc-by-nc-4.0",
    "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0", "other", "unknown",
}  # fmt: skip
#: Hub task ids (huggingface.js ``pipelines.ts``) the verticals domains map to.
TASKS = {
    "image-classification", "image-segmentation", "zero-shot-image-classification", "mask-generation",
    "time-series-forecasting", "automatic-speech-recognition", "audio-classification", "tabular-classification",
    "other",
}  # fmt: skip
SIZES = {
    "n<1K", "1K<n<10K", "10K<n<100K", "100K<n<1M", "1M<n<10M", "10M<n<100M", "100M<n<1B", "1B<n<10B", "other",
}  # fmt: skip
REQUIRED = ("pretty_name", "license", "task_categories", "size_categories", "source_datasets", "tags")
THE_PROJECT = "Apache-2.0"  # pyproject.toml's licence: what a generated set is released under


def _split(card: Path) -> tuple[dict[str, Any], str]:
    text = card.read_text()
    assert text.startswith("---\n"), f"{card.name}: no YAML front matter"
    head, body = text[4:].split("\n---\n", 1)
    return yaml.safe_load(head), body


def _resolve(dotted: str) -> Any:
    """An attribute by its dotted path: the longest importable module, then attributes or mapping keys
    (``package.module.CONSTANT``, ``package.module.LAYOUTS.chexpert.default_label``, ``….voices.0.name``)."""
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            value = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for part in parts[cut:]:
            if isinstance(value, dict):
                value = value[part]
            elif isinstance(value, (list, tuple)) and part.isdigit():
                value = value[int(part)]
            else:
                value = getattr(value, part)
        return value
    raise ModuleNotFoundError(dotted)


def _plain(value: Any) -> Any:
    """Tuples as lists, mapping values alike, so YAML values compare with Python ones."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    return value


def _same(expected: Any, actual: Any) -> bool:
    expected, actual = _plain(expected), _plain(actual)
    if isinstance(expected, float) and isinstance(actual, (int, float)):
        return math.isclose(expected, actual)
    return expected == actual


def _without_fences(body: str) -> str:
    """The body with its fenced code blocks removed (examples, not quotes of the defaults)."""
    return re.sub(r"```.*?```", "", body, flags=re.DOTALL)


def _section(body: str, heading: str) -> str:
    """The text of the first ``##`` section whose heading contains ``heading`` (case-insensitive)."""
    match = re.search(rf"^## [^\n]*{re.escape(heading)}[^\n]*\n(.*?)(?=^## |\Z)", body, re.M | re.S | re.I)
    return match.group(1) if match else ""


@pytest.fixture(scope="module", params=CARDS, ids=lambda card: card.stem)
def card(request) -> tuple[Path, dict[str, Any], str]:
    meta, body = _split(request.param)
    return request.param, meta, body


def test_there_is_a_card_per_dataset_and_each_parses() -> None:
    assert len(CARDS) >= 27
    for card in CARDS:
        meta, _ = _split(card)
        assert isinstance(meta, dict), card.name


def test_front_matter_has_the_hub_keys_with_allowed_values(card) -> None:
    path, meta, _ = card
    missing = [key for key in REQUIRED if not meta.get(key)]
    assert not missing, f"{path.name}: missing {missing}"
    licences = meta["license"] if isinstance(meta["license"], list) else [meta["license"]]
    assert set(licences) <= LICENSES, f"{path.name}: licence {licences}"
    if "other" in licences:
        assert meta.get("license_name") and meta.get("license_details"), (
            f"{path.name}: `license: other` needs `license_name` and `license_details` (the authors' terms)"
        )
    assert set(meta["task_categories"]) <= TASKS, f"{path.name}: {meta['task_categories']}"
    assert set(meta["size_categories"]) <= SIZES and len(meta["size_categories"]) == 1, path.name
    assert all(
        source == "original" or source.startswith("extended|") for source in meta["source_datasets"]
    ), f"{path.name}: source_datasets are `original` or `extended|<name>`"
    assert all(isinstance(tag, str) and tag == tag.lower() for tag in meta["tags"]), path.name
    assert isinstance(meta.get("verticals_defaults"), dict), f"{path.name}: no `verticals_defaults`"


def test_generated_sets_carry_the_projects_licence_and_citation(card) -> None:
    path, meta, body = card
    if "synthetic" not in meta["tags"]:
        return
    assert meta["license"] == THE_PROJECT.lower() and meta["source_datasets"] == ["original"], path.name
    assert "@software{verticals" in body, f"{path.name}: a generated set cites the project"


def test_body_has_the_sections_people_look_for(card) -> None:
    path, meta, body = card
    citation = _section(body, "Citation")
    assert re.search(r"```bibtex\n(@\w+\{[\w:.\-]+,.*?\n\}\n)+```", citation, re.S), (
        f"{path.name}: no BibTeX block under a citation heading"
    )
    for entry in re.findall(r"@\w+\{[^@]*", citation):
        assert "title" in entry and ("year" in entry or "version" in entry), f"{path.name}: {entry[:60]}"
    assert _section(body, "Uses").strip() and re.search(r"^## Uses\s*$", body, re.M), path.name
    assert re.search(r"^## Out-of-scope uses\s*$", body, re.M), path.name
    if "medical" in meta["tags"]:
        assert re.search(r"^## Personal and sensitive information\s*$", body, re.M), path.name


def test_quoted_defaults_match_the_code(card) -> None:
    """The front matter's ``verticals_defaults`` against the signatures, constants and packaged configs."""
    path, meta, _ = card
    quoted = meta["verticals_defaults"]
    for dotted, defaults in (quoted.get("signatures") or {}).items():
        parameters = inspect.signature(_resolve(dotted)).parameters
        for name, value in defaults.items():
            assert name in parameters, f"{path.name}: {dotted} has no parameter `{name}`"
            default = parameters[name].default
            assert default is not inspect.Parameter.empty, f"{path.name}: {dotted}({name}) has no default"
            assert _same(value, default), (
                f"{path.name}: {dotted}({name}={value!r}) but the code has {default!r}"
            )
    for dotted, value in (quoted.get("constants") or {}).items():
        actual = _resolve(dotted)
        assert _same(value, actual), f"{path.name}: {dotted} = {value!r} but the code has {actual!r}"
    domains = Path(importlib.import_module("verticals.domains").__path__[0])
    for name, expected in (quoted.get("configs") or {}).items():
        domain, config = name.split("/")
        data = yaml.safe_load((domains / domain / "configs" / f"{config}.yaml").read_text())["data"]
        assert data["class_path"] == expected["class_path"], f"{path.name}: {name} reads {data['class_path']}"
        for key, value in (expected.get("init_args") or {}).items():
            assert _same(value, data["init_args"].get(key)), (
                f"{path.name}: {name} has {key}={data['init_args'].get(key)!r}"
            )


def test_quoted_split_sizes_are_measured(card) -> None:
    """Split sizes a card states for a set that ships with a package (cheap to build) are what setup gives."""
    path, meta, _ = card
    for dotted, expected in (meta["verticals_defaults"].get("splits") or {}).items():
        datamodule = _resolve(dotted)(**expected.get("init", {}))
        train, val = datamodule.split_indices
        sizes = {"train": len(train), "val": len(val), "test": len(datamodule.arrays.y_test)}
        wanted = {key: expected[key] for key in ("train", "val", "test")}
        assert sizes == wanted, f"{path.name}: {dotted} splits {sizes}, the card says {wanted}"


def _literal(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return inspect.Parameter.empty


def _signature_quotes(body: str, callables: dict[str, Any]) -> list[tuple[str, str, str]]:
    """``(span, parameter, value text)`` of every keyword in an inline quote of a listed callable written as a
    signature: ``Name(a, b=1)`` whose positional arguments are parameter names, not literal values."""
    found = []
    for span in re.findall(r"`([^`]+)`", _without_fences(body)):
        span = " ".join(span.split())  # a quote may wrap over lines
        match = re.fullmatch(r"(\w+)\((.*)\)", span)
        if not match or match.group(1) not in callables:
            continue
        try:
            call = ast.parse(span, mode="eval").body
        except SyntaxError:
            continue
        if not isinstance(call, ast.Call) or any(not isinstance(arg, ast.Name) for arg in call.args):
            continue  # a literal positional argument: a call example, not the signature
        for keyword in call.keywords:
            found.append((span, keyword.arg, ast.get_source_segment(span, keyword.value)))
    return found


def test_defaults_quoted_in_the_text_match_the_code(card) -> None:
    path, meta, body = card
    dotted = list(meta["verticals_defaults"].get("signatures") or {})
    callables = {name.rpartition(".")[2]: _resolve(name) for name in dotted}
    parameters: dict[str, Any] = {}
    for target in callables.values():
        for name, parameter in inspect.signature(target).parameters.items():
            if parameter.default is not inspect.Parameter.empty:
                parameters.setdefault(name, parameter.default)
    for span, name, text in _signature_quotes(body, callables):
        target = callables[span.split("(", 1)[0]]
        parameter = inspect.signature(target).parameters.get(name)
        assert parameter is not None, f"{path.name}: `{span}` names `{name}`, not a parameter of the code"
        value = _literal(text)
        if value is Ellipsis:  # `name=...`: a value left open, not a default
            continue
        if value is inspect.Parameter.empty:  # a constant's name: it must be the default's own value
            value = getattr(inspect.getmodule(target), text, inspect.Parameter.empty)
        assert _same(value, parameter.default), (
            f"{path.name}: `{span}` quotes {name}={text} but the default is {parameter.default!r}"
        )
    prose = _without_fences(body)
    said = re.findall(r"`(\w+)=([^`]+)`\s+\(default", prose) + re.findall(r"default\s+`(\w+)=([^`]+)`", prose)
    for name, text in said:
        if name in parameters and _literal(text) is not inspect.Parameter.empty:
            assert _same(_literal(text), parameters[name]), (
                f"{path.name}: `{name}={text}` (default) but the code's default is {parameters[name]!r}"
            )
