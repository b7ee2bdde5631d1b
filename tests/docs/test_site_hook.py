"""The build hook's helpers (docs/hooks/site_files.py): what it takes from the repository, the generated API
reference, configs tables and charts, card front matter and the rendering fixes; no build needed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parents[2]


def test_the_reference_documents_every_public_module_once(hook):
    documented = [name for _, _, modules in hook.reference_groups() for name in modules]
    assert len(documented) == len(set(documented))
    expected = set()
    for package, folder in hook.PACKAGE_FOLDERS.items():
        for path in (REPOSITORY / folder).rglob("*.py"):
            parts = path.relative_to(REPOSITORY / folder).with_suffix("").parts
            if any(part.startswith("_") and part != "__init__" for part in parts):
                continue
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            expected.add(".".join(["verticals", package, *parts]))
    expected.discard("verticals.domains")  # the namespace package: its docstring is on the domains page
    assert expected == set(documented)


def test_config_descriptions_come_from_the_first_comment(hook, tmp_path):
    config = tmp_path / "demo.yaml"
    config.write_text("# One sentence: that ends here.\n# Another line.\nseed_everything: 0\n")
    assert hook.config_description(config) == "One sentence: that ends here."
    config.write_text("# A description that runs\n# over two lines | with a pipe.\n#\n# More.\ntrainer: {}\n")
    assert hook.config_description(config) == "A description that runs over two lines \\| with a pipe."


def test_every_packaged_config_is_on_a_domain_page(hook):
    listed = set()
    for page in (REPOSITORY / "docs" / "domains").glob("*.md"):
        for match in hook.CONFIGS_MARKER.finditer(page.read_text(encoding="utf-8")):
            table = hook.configs_table(match.group("patterns").split())
            listed.update(re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE))
    packaged = {f"{p.parent.parent.name}/{p.stem}" for p in (REPOSITORY / "domains").glob("*/configs/*.yaml")}
    assert packaged == listed


def test_a_marker_naming_nothing_is_an_error(hook):
    with pytest.raises(ValueError, match="No packaged config matches"):
        hook.configs_table(["timeseries/no_such_config"])
    with pytest.raises(ValueError, match="No benchmark report"):
        hook.charts_markdown(["no_such_benchmark"], "domains/x.md")


def test_charts_belong_to_their_benchmark_and_link_relative_to_the_page(hook):
    results = REPOSITORY / "benchmarks" / "results"
    assert hook.chart_owner(results / "pointcloud" / "accuracy_by_group.png") == "pointcloud"
    # A chart belongs to the longest report name it starts with: speech_voices_*.png is not speech's.
    assert hook.chart_owner(results / "speech_voices_wer.png") == "speech_voices"
    assert hook.chart_owner(results / "speech_wer_by_condition.png") == "speech"
    assert hook.chart_owner(results / "stray.png") is None
    for chart in hook.benchmark_charts("pointcloud"):
        assert f"](../{chart.relative_to(REPOSITORY).as_posix()})" in hook.charts_markdown(
            ["pointcloud"], "domains/pointcloud.md"
        )


def test_card_front_matter_is_read_and_skipped(hook):
    text = "---\nlicense: cc-by-4.0\ntask_categories: [image-classification]\n---\n# The Card\n\nBody.\n"
    assert hook.front_matter(text) == {"license": "cc-by-4.0", "task_categories": ["image-classification"]}
    assert hook.first_heading(text, "fallback") == "The Card"
    assert hook.front_matter("# No front matter\n") == {}
    assert hook.front_matter("---\n: not yaml: [\n---\n# T\n") == {}
    # MkDocs itself takes a card's front matter as page metadata, so the card renders from its heading.
    from mkdocs.utils import meta

    content, data = meta.get_data(text)
    assert content.startswith("# The Card") and data["license"] == "cc-by-4.0"


def test_rendering_fixes_keep_what_github_shows(hook):
    class Page:
        def __init__(self, uri):
            self.file = type("File", (), {"src_uri": uri})()

    table_cell = r"<td><code>verticals fit\|test</code> and |x|</td>"
    assert hook.on_page_content(table_cell, Page("reliability.md"), None, None) == (
        "<td><code>verticals fit|test</code> and |x|</td>"
    )
    role = "see :func:<code>register_family</code> and :class:<code>~verticals.core.resume.RunLock</code>"
    assert hook.on_page_content(role, Page("reference/core.md"), None, None) == (
        "see <code>register_family</code> and <code>verticals.core.resume.RunLock</code>"
    )
    assert hook.on_page_content(role, Page("concepts/index.md"), None, None) == role  # only the reference
