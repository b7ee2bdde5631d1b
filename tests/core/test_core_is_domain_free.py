"""The core names no domain and works without any: no domain words in ``core/``, every core module imports
with the domain packages blocked; ``scripts/test.sh`` also runs the core's tests that way
(``VERTICALS_BLOCK_DOMAINS=1``)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CORE = ROOT / "core"
TESTS = Path(__file__).resolve().parent
# Words that belong to a domain package, never to the core: a domain's data, models and metrics live in
# domains/<name>/ (generic words: "sequence", "sample", "group", "mask").
DOMAIN_WORDS = re.compile(
    r"(?<![a-z])(whisper|speech|utterance|skin|lesion|dermatolog(?:y|ical|ist)?|medical)s?(?![a-z])",
    re.IGNORECASE,
)


def domain_word_hits(root: Path = CORE) -> list[str]:
    """``file:line: text`` of every line under ``root`` (code, configs, docs) that names a domain."""
    hits = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path.suffix not in (".py", ".yaml", ".yml", ".md", ".txt", ".json"):
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if DOMAIN_WORDS.search(line):
                hits.append(f"{path.relative_to(root.parent)}:{number}: {line.strip()}")
    return hits


def test_the_domain_word_check_finds_what_it_should(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "module.py").write_text(
        "x = 1  # masking and whispering are fine\nfamily = 'hf_whisper'\n# Speech recognition\n"
        "skin_tone = 2\nlesions = []\n"
    )
    (tmp_path / "pkg" / "data.bin").write_text("speech")
    hits = domain_word_hits(tmp_path / "pkg")
    assert [hit.split(":")[:2] for hit in hits] == [["pkg/module.py", str(n)] for n in (2, 3, 4, 5)]


def test_core_names_no_domain():
    hits = domain_word_hits()
    assert not hits, (
        "Domain words in core/ (move the code to domains/<name>/ or use generic words):\n" + "\n".join(hits)
    )


def _blocked_python(code: str) -> subprocess.CompletedProcess:
    prelude = f"import sys\nsys.path.insert(0, {str(TESTS)!r})\nfrom conftest import block_domains\nblock_domains()\n"
    return subprocess.run(
        [sys.executable, "-c", prelude + code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def test_every_core_module_imports_with_the_domains_blocked():
    code = (
        "import importlib, pkgutil\n"
        "import verticals.core\n"
        "names = [m.name for m in pkgutil.walk_packages(verticals.core.__path__, 'verticals.core.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "try:\n"
        "    import verticals.domains.timeseries\n"
        "except ModuleNotFoundError as error:\n"
        "    assert 'blocked' in str(error)\n"
        "else:\n"
        "    raise SystemExit('the blocker let a domain through')\n"
        "from conftest import SHIPPED\n"
        "assert SHIPPED >= {'speech', 'timeseries'}\n"
        "assert not [name for name in sys.modules if name.startswith('verticals.domains.')]\n"
        "print(len(names), 'core modules')\n"
    )
    result = _blocked_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(result.stdout.split()[0]) > 20
