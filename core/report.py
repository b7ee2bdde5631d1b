"""The short report a run leaves behind: ``report.json`` for machines, ``report.md`` for people."""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch


def adapter_size_bytes(directory: Path) -> int:
    """Bytes of the weight files in an exported adapter directory."""
    return sum(path.stat().st_size for path in directory.glob("*.safetensors")) if directory.is_dir() else 0


def write_report(
    run_dir: Path,
    *,
    task: Any,
    test_metrics: dict[str, float],
    best_validation: dict[str, Any] | None,
    checkpoint: str,
    timing: dict[str, float] | None,
) -> dict[str, Any]:
    """Write ``report.json`` and ``report.md`` into ``run_dir`` and return the report."""
    run_dir.mkdir(parents=True, exist_ok=True)
    summary = task.parameter_summary()
    adapter_bytes = adapter_size_bytes(run_dir / "adapter")
    report = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "task": type(task).__name__,
        "model": task.hparams.get("model"),
        "model_args": task.hparams.get("model_args"),
        "adapter": task.hparams.get("adapter"),
        "backbone": task.backbone_reference,
        "parameters": summary.as_dict(),
        "adapter_file_bytes": adapter_bytes,
        "adapter_file_vs_trainable_bytes": adapter_bytes / summary.trainable_bytes
        if summary.trainable_bytes
        else None,
        "test": test_metrics,
        "best_validation": best_validation,
        "checkpoint": checkpoint,
        "timing": timing,
        "environment": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "machine": platform.machine(),
        },
    }
    (run_dir / "report.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    (run_dir / "report.md").write_text(_markdown(report))
    return report


def _markdown(report: dict[str, Any]) -> str:
    parameters = report["parameters"]
    adapter = report["adapter"] or {}
    lines = [
        f"# {report['task']} — {report['model']}",
        "",
        f"- adapter: `{adapter.get('method')}` on `{adapter.get('targets')}`, options `{adapter.get('options')}`",
        f"- backbone: `{report['backbone'].get('source')}` (fingerprint `{str(report['backbone'].get('fingerprint'))[:12]}`)",
        f"- trainable parameters: {parameters['trainable']:,} of {parameters['backbone']:,} backbone parameters "
        f"({parameters['trainable_percent']:.3f}%)",
        f"- adapter file: {report['adapter_file_bytes']:,} bytes",
    ]
    if report["best_validation"]:
        lines.append(
            f"- best {report['best_validation']['monitor']}: {report['best_validation']['value']:.4f}"
        )
    if report["timing"]:
        timing = report["timing"]
        lines.append(
            f"- training: {timing['fit_seconds']:.1f} s, {timing['samples_per_second']:.1f} samples/s"
        )
    lines += ["", "| test metric | value |", "|---|---|"]
    lines += [
        f"| {name.removeprefix('test_')} | {value:.4f} |" for name, value in sorted(report["test"].items())
    ]
    return "\n".join(lines) + "\n"
