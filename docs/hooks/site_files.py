"""MkDocs hook: bring files that live elsewhere in the repository into the site at build time.

The benchmark reports and their charts (``benchmarks/results``), the worked notebooks (``notebooks/*.ipynb``)
and the dataset cards (``datasets_cards/*.md``) each have one home in the repository; the site reads them
from there instead of keeping copies under ``docs/``. The API reference pages are generated too, one per
module group, so a new module or domain appears without an edit here. Each generated section is added to
the navigation after its index page (``nav_additions``). On the hand-written pages, ``<!-- configs: ... -->``
and ``<!-- charts: ... -->`` lines become the table of a domain's packaged configs and its benchmark charts.

mkdocstrings reads the source statically (griffe, nothing is imported), but ``verticals`` is not a folder in
the repository: setup.py maps ``core/``, ``domains/`` and ``fused_kernels/`` onto ``verticals.*``. The hook
builds that layout as symbolic links in a temporary folder and points mkdocstrings at it.
"""

from __future__ import annotations

import json
import posixpath
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

REPOSITORY = Path(__file__).resolve().parents[2]
PACKAGE_FOLDERS = {"core": "core", "domains": "domains", "kernels": "fused_kernels"}  # verticals.<key> -> folder
PACKAGE_FOLDERS_INVERSE = {folder: name for name, folder in PACKAGE_FOLDERS.items()}
RESULT_SUFFIXES = {".md", ".png", ".svg", ".jpg", ".json"}
CHART_SUFFIXES = (".png", ".svg", ".jpg")

# Top-level modules of verticals.core, grouped for the reference; a module not listed lands in "More".
CORE_GROUPS = {
    "core.runs": (
        "Runs: CLI, callbacks, reports, seeds, resume",
        [
            "cli",
            "callbacks",
            "report",
            "report_outputs",
            "report_plots",
            "report_figures",
            "baseline",
            "baseline_scoring",
            "linear_probe",
            "model_card",
            "quiet",
            "extras",
            "seeds",
            "seeding",
            "resume",
        ],
    ),
    "core.models": (
        "Models, methods and training objectives",
        ["registry", "peft_methods", "group_objective", "group_report", "checkpoint", "prefix_cache"],
    ),
    "core.data": (
        "Data, files and caches",
        ["data", "manifest_data", "image_io", "file_errors", "checkpoint_io", "cache"],
    ),
}

_state: dict[str, Any] = {}


# -- what the site takes from the repository --------------------------------------------------------------
def benchmark_files() -> list[Path]:
    """Every report, chart and raw-number file under ``benchmarks/results`` (not the per-run arrays)."""
    root = REPOSITORY / "benchmarks" / "results"
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in RESULT_SUFFIXES)


def benchmark_pages() -> list[Path]:
    """The top-level reports (``benchmarks/results/<name>.md``), one page each in the navigation."""
    return sorted((REPOSITORY / "benchmarks" / "results").glob("*.md"))


def notebooks() -> list[Path]:
    return sorted((REPOSITORY / "notebooks").glob("*.ipynb"))


def dataset_cards() -> list[Path]:
    return sorted((REPOSITORY / "datasets_cards").glob("*.md"))


def first_heading(text: str, fallback: str) -> str:
    """The first ``# `` heading of a markdown text (after any front matter), else ``fallback``."""
    text = strip_front_matter(text)
    for line in text.splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    return fallback


def strip_front_matter(text: str) -> str:
    match = re.match(r"\A---\s*\n.*?\n---\s*\n", text, flags=re.DOTALL)
    return text[match.end() :] if match else text


def front_matter(text: str) -> dict[str, Any]:
    """The YAML front matter of a card (``{}`` when it has none or it does not parse)."""
    import yaml

    match = re.match(r"\A---\s*\n(.*?)\n---\s*\n", text, flags=re.DOTALL)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError:
        return {}
    return data if isinstance(data, dict) else {}


ACRONYMS = {"sam": "SAM", "lora": "LoRA", "gunpoint": "GunPoint"}


def report_label(path: Path) -> str:
    """A benchmark report's name for the navigation: its file name (several reports share a heading)."""
    words = [ACRONYMS.get(word, word) for word in path.stem.split("_")]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


def short_title(title: str) -> str:
    """``"Point clouds: does a small adapter ...?"`` -> ``"Point clouds"``: a navigation entry, not a question."""
    head, separator, _ = title.partition(": ")
    return head if separator and len(head) <= 40 else title


def notebook_title(path: Path) -> str:
    cells = json.loads(path.read_text(encoding="utf-8")).get("cells", [])
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            return first_heading("".join(cell.get("source", [])), path.stem)
    return path.stem


# -- the API reference ----------------------------------------------------------------------------------
def public_modules(package: str) -> list[str]:
    """Dotted names of ``verticals.<package>``'s modules: the package first, then its modules and
    subpackages in path order; private modules (``_name.py``) are left out."""
    root = REPOSITORY / PACKAGE_FOLDERS[package.split(".")[0]]
    folder = root.joinpath(*package.split(".")[1:])
    names = []
    for path in sorted(folder.rglob("*.py"), key=lambda p: (p.parent != folder, str(p.parent), p.name)):
        relative = path.relative_to(root).with_suffix("")
        parts = list(relative.parts)
        if any(part.startswith("_") and part != "__init__" for part in parts):
            continue
        if not (path.parent / "__init__.py").exists():
            continue
        if parts[-1] == "__init__":
            parts = parts[:-1]
        base = PACKAGE_FOLDERS_INVERSE[root.name]
        names.append(".".join(["verticals", base, *parts]))
    return names


def reference_groups() -> list[tuple[str, str, list[str]]]:
    """``(page stem, title, modules)`` for every reference page."""
    core_modules = public_modules("core")
    top_level = [  # verticals.core.<module>, not the subpackages
        name for name in core_modules if name.count(".") == 2 and module_path(name).name != "__init__.py"
    ]
    groups: list[tuple[str, str, list[str]]] = [
        ("core", "verticals.core (the public API)", ["verticals.core"])
    ]
    listed: set[str] = set()
    for stem, (title, members) in CORE_GROUPS.items():
        modules = [f"verticals.core.{name}" for name in members if f"verticals.core.{name}" in top_level]
        listed.update(modules)
        groups.append((stem, title, modules))
    more = [name for name in top_level if name not in listed]
    if more:
        groups.append(("core.more", "More core modules", more))
    for sub in ("adapters", "tasks", "metrics"):
        groups.append((f"core.{sub}", f"verticals.core.{sub}", public_modules(f"core.{sub}")))
    groups.append(("kernels", "verticals.kernels", public_modules("kernels")))
    for domain in sorted(p.name for p in (REPOSITORY / "domains").iterdir() if (p / "__init__.py").exists()):
        groups.append(
            (f"domains.{domain}", f"verticals.domains.{domain}", public_modules(f"domains.{domain}"))
        )
    return groups


def reference_page(title: str, modules: list[str]) -> str:
    lines = [f"# {title}", ""]
    for name in modules:
        path = module_path(name)
        if path.name == "__init__.py" and name != "verticals.core":
            # A package's own docstring; its members are documented on their modules' sections.
            lines += [f"::: {name}", "    options:", "      members: false", ""]
        else:
            lines += [f"::: {name}", ""]
    return "\n".join(lines)


def module_path(name: str) -> Path:
    parts = name.split(".")[1:]
    folder = REPOSITORY / PACKAGE_FOLDERS[parts[0]]
    target = folder.joinpath(*parts[1:])
    return target / "__init__.py" if target.is_dir() else target.with_suffix(".py")


def reference_index(groups: list[tuple[str, str, list[str]]]) -> str:
    lines = [
        "# API reference",
        "",
        "Generated from the docstrings at build time (mkdocstrings reads the source; nothing is imported). "
        "One page per module group:",
        "",
        "| page | modules |",
        "|---|---|",
    ]
    for stem, title, modules in groups:
        shown = ", ".join(f"`{name.removeprefix('verticals.')}`" for name in modules)
        lines.append(f"| [{title}]({stem}.md) | {shown} |")
    return "\n".join(lines) + "\n"


# -- index pages -----------------------------------------------------------------------------------------
def benchmarks_index() -> str:
    """``benchmarks/README.md`` with a table of every report (and its charts) right under its heading."""
    readme = (REPOSITORY / "benchmarks" / "README.md").read_text(encoding="utf-8")
    heading, _, body = readme.partition("\n")
    if not heading.startswith("# "):
        heading, body = "# Benchmarks", readme
    lines = [heading, "", "## Results", "", "| report | title | charts |", "|---|---|---|"]
    for page in benchmark_pages():
        title = first_heading(page.read_text(encoding="utf-8"), page.stem)
        charts = benchmark_charts(page.stem)
        lines.append(f"| [{report_label(page)}](results/{page.name}) | {title} | {len(charts)} |")
    body = re.sub(r"^(#{2,5}) ", r"#\1 ", body.strip(), flags=re.MULTILINE)  # under the section below
    return "\n".join([*lines, "", "## How the benchmarks are made", "", body]) + "\n"


def chart_owner(chart: Path) -> str | None:
    """The benchmark a chart belongs to: ``results/<name>/*.png`` or ``results/<name>_*.png`` beside
    ``results/<name>.md``, the longest such name (``speech_voices_wer.png`` is ``speech_voices``'s)."""
    results = REPOSITORY / "benchmarks" / "results"
    relative = chart.relative_to(results)
    if len(relative.parts) > 1:
        return relative.parts[0] if (results / f"{relative.parts[0]}.md").exists() else None
    names = [p.stem for p in benchmark_pages() if chart.stem == p.stem or chart.stem.startswith(p.stem + "_")]
    return max(names, key=len, default=None)


def datasets_index() -> str:
    lines = [
        "# Datasets",
        "",
        "One card per dataset the domains can load, real or generated (`datasets_cards/` in the repository).",
        "",
        "| card | licence | task | size |",
        "|---|---|---|---|",
    ]
    for card in dataset_cards():
        text = card.read_text(encoding="utf-8")
        meta = front_matter(text)
        licence = _plain(meta.get("license", ""))
        task = _plain(meta.get("task_categories", meta.get("task_ids", "")))
        size = _plain(meta.get("size_categories", ""))
        lines.append(f"| [{first_heading(text, card.stem)}]({card.name}) | {licence} | {task} | {size} |")
    return "\n".join(lines) + "\n"


def _plain(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(str(item) for item in value)
    return str(value).replace("|", "\\|")


# -- packaged configs on the domain pages ----------------------------------------------------------------
# A full stop that ends a sentence: not "et al.,", "0.5", "e.g." or "i.e.".
SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.(?=\s+[A-Z(`]|$)")
CONFIGS_MARKER = re.compile(r"^<!-- configs: (?P<patterns>[^>]+) -->$", flags=re.MULTILINE)


def config_description(path: Path) -> str:
    """The first sentence of a config's leading comment (``verticals configs`` shows only its first line)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.lstrip("#").strip() if line.startswith("#") else ""
        if not text:
            break
        lines.append(text)
    comment = " ".join(lines)
    end = SENTENCE_END.search(comment)
    sentence = comment[: end.start() + 1] if end else comment
    return sentence.rstrip(":").replace("|", "\\|")


def configs_table(patterns: list[str]) -> str:
    """A markdown table of the packaged configs matching ``<domain>/<glob>`` patterns."""
    rows = ["| config | what it runs |", "|---|---|"]
    seen = set()
    for pattern in patterns:
        domain, _, name = pattern.partition("/")
        for path in sorted((REPOSITORY / "domains" / domain / "configs").glob(f"{name or '*'}.yaml")):
            if path in seen:
                continue
            seen.add(path)
            rows.append(f"| `{domain}/{path.stem}` | {config_description(path)} |")
    if len(rows) == 2:
        raise ValueError(f"No packaged config matches {patterns} (docs page marker `<!-- configs: ... -->`).")
    return "\n".join(rows)


def expand_config_markers(markdown: str) -> str:
    return CONFIGS_MARKER.sub(lambda match: configs_table(match.group("patterns").split()), markdown)


# -- benchmark charts on the domain pages ---------------------------------------------------------------
CHARTS_MARKER = re.compile(r"^<!-- charts: (?P<names>[^>]+) -->$", flags=re.MULTILINE)


def benchmark_charts(name: str) -> list[Path]:
    """The charts of benchmark ``name``: ``results/<name>_*.png`` beside its report and ``results/<name>/*.png``."""
    results = REPOSITORY / "benchmarks" / "results"
    return sorted(p for p in results.rglob("*") if p.suffix in CHART_SUFFIXES and chart_owner(p) == name)


def charts_markdown(names: list[str], page_uri: str) -> str:
    """Images of every chart of the named benchmarks, linked relative to the page at ``page_uri``."""
    page_folder = posixpath.dirname(page_uri)
    images = []
    for name in names:
        if not (REPOSITORY / "benchmarks" / "results" / f"{name}.md").exists():
            raise ValueError(
                f"No benchmark report benchmarks/results/{name}.md (docs page marker `<!-- charts -->`)."
            )
        for chart in benchmark_charts(name):
            target = posixpath.relpath(chart.relative_to(REPOSITORY).as_posix(), page_folder or ".")
            label = chart.stem.replace("_", " ")
            images.append(f"![{label}]({target})")
    return "\n\n".join(images)


def expand_chart_markers(markdown: str, page_uri: str) -> str:
    return CHARTS_MARKER.sub(lambda match: charts_markdown(match.group("names").split(), page_uri), markdown)


# -- MkDocs events ---------------------------------------------------------------------------------------
def source_tree() -> Path:
    """A temporary folder holding ``verticals/{core,domains,kernels}`` as links to the repository's folders."""
    root = Path(tempfile.mkdtemp(prefix="verticals-docs-"))
    (root / "verticals").mkdir()
    for name, folder in PACKAGE_FOLDERS.items():
        (root / "verticals" / name).symlink_to(REPOSITORY / folder, target_is_directory=True)
    return root


def nav_additions() -> dict[str, list[dict[str, str]]]:
    """Navigation entries to add after each generated section's index page."""
    groups = reference_groups()
    return {
        "benchmarks/index.md": [{report_label(p): f"benchmarks/results/{p.name}"} for p in benchmark_pages()],
        "notebooks/index.md": [{short_title(notebook_title(p)): f"notebooks/{p.name}"} for p in notebooks()],
        "datasets_cards/index.md": [
            {first_heading(p.read_text(encoding="utf-8"), p.stem): f"datasets_cards/{p.name}"}
            for p in dataset_cards()
        ],
        "reference/index.md": [
            {title.removeprefix("verticals."): f"reference/{stem}.md"} for stem, title, _ in groups
        ],
    }


def _extend_nav(nav: Any, additions: dict[str, list[dict[str, str]]]) -> None:
    if isinstance(nav, list):
        for index_page, entries in additions.items():
            if index_page in nav or {"Overview": index_page} in nav:
                present = {json.dumps(item, sort_keys=True) for item in nav}
                nav.extend(item for item in entries if json.dumps(item, sort_keys=True) not in present)
        for item in nav:
            _extend_nav(item, additions)
    elif isinstance(nav, dict):
        for value in nav.values():
            _extend_nav(value, additions)


@event_priority(100)
def on_config(config: Any) -> Any:
    on_shutdown()  # `mkdocs serve` configures again on every rebuild
    tree = source_tree()
    _state["tree"] = tree
    handlers = config.plugins["mkdocstrings"].config.handlers
    handlers.setdefault("python", {})["paths"] = [str(tree)]
    _extend_nav(config.nav, nav_additions())
    return config


def repository_file(path: Path, config: Any) -> File:
    """A site file read from its place in the repository, at the same relative path in the site.

    (A plain ``File`` with the repository as its source folder, not ``File.generated``: mkdocs-jupyter's
    wrapper loses a generated file's source path.)
    """
    return File(
        path.relative_to(REPOSITORY).as_posix(),
        src_dir=str(REPOSITORY),
        dest_dir=config.site_dir,
        use_directory_urls=config.use_directory_urls,
    )


@event_priority(100)  # before mkdocs-jupyter's on_files, which turns the .ipynb files into pages
def on_files(files: Files, config: Any) -> Files:
    for path in [*benchmark_files(), *notebooks(), *dataset_cards()]:
        files.append(repository_file(path, config))
    files.append(File.generated(config, "benchmarks/index.md", content=benchmarks_index()))
    readme = (REPOSITORY / "notebooks" / "README.md").read_text(encoding="utf-8")
    files.append(File.generated(config, "notebooks/index.md", content=readme))
    files.append(File.generated(config, "datasets_cards/index.md", content=datasets_index()))
    groups = reference_groups()
    files.append(File.generated(config, "reference/index.md", content=reference_index(groups)))
    for stem, title, modules in groups:
        files.append(File.generated(config, f"reference/{stem}.md", content=reference_page(title, modules)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    if page.file.src_uri.startswith("benchmarks/results/"):
        page.meta.setdefault("hide", ["toc"])  # wide tables: the report's width goes to them
    if not _written_for_the_site(page.file, config):
        return markdown  # a report, card or README read from the repository keeps its own comments
    return expand_chart_markers(expand_config_markers(markdown), page.file.src_uri)


def _written_for_the_site(file: File, config: Any) -> bool:
    source = file.abs_src_path
    return source is not None and Path(source).resolve().is_relative_to(Path(config.docs_dir).resolve())


SPHINX_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|exc|obj|const):(<code>)~?")


CODE_SPAN = re.compile(r"<code>[^<]*</code>")


def on_page_content(html: str, page: Any, config: Any, files: Files) -> str:
    """Two renderings made to match what readers of the same files on GitHub see: a pipe escaped inside a
    table's code span (``a\\|b``) shows as ``a|b``; and in the API reference, the few Sphinx roles of the
    docstrings (``:func:`name```) show as the name in code, not as the role's markup."""
    html = CODE_SPAN.sub(lambda match: match.group(0).replace("\\|", "|"), html)
    if page.file.src_uri.startswith("reference/"):
        html = SPHINX_ROLE.sub(r"\1", html)
    return html


def on_shutdown() -> None:
    tree = _state.pop("tree", None)
    if tree is not None:
        shutil.rmtree(tree, ignore_errors=True)


def iter_generated_pages() -> Iterator[str]:
    """Every page URL path the hook adds (for the tests)."""
    for entries in nav_additions().values():
        for entry in entries:
            yield from entry.values()
