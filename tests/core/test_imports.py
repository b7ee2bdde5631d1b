"""The core installs without any domain extra: nothing in it may import a domain's packages at import time."""

from __future__ import annotations

import subprocess
import sys

DOMAIN_PACKAGES = (
    "jiwer",
    "torchaudio",
    "timm",
    "open_clip",
    "sktime",
    "fairlearn",
    "triton",
    "espeakng_loader",
)


def test_core_imports_without_domain_extras():
    blocked = ", ".join(repr(name) for name in DOMAIN_PACKAGES)
    code = (
        f"import sys\nfor name in ({blocked},):\n    sys.modules[name] = None\n"
        "import verticals.core, verticals.core.tasks, verticals.core.metrics, verticals.core.cli, verticals.kernels\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
