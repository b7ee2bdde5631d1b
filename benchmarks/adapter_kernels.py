"""Adapter kernel benchmark: fused LoRA / mixed-batch paths vs peft, per layer shape and batch size.

For each real layer shape (ViT-B/16 and SAM ViT-B attention qkv/proj and MLP fc1/fc2, Whisper tiny, a
4096-wide LLM projection) and batch size, one peft-adapted ``nn.Linear`` (LoRA r=16, 8 adapters for the
mixed batch) is timed as:

- ``base``: the frozen ``nn.Linear`` alone; ``peft merged``: peft with the adapter merged;
- ``peft unmerged`` vs ``verticals``: the same layer after ``enable_fused_lora`` (forward, and a training
  step = forward + backward);
- ``peft mixed`` vs ``verticals mixed``: one forward with ``adapter_names=`` over 8 adapters + base rows.

On a CPU machine the verticals path is the dispatcher's reference path (peft's own forward), so the ratio
measures what a CPU user gets from enabling the kernels: the same outputs (max |difference| reported) and
no slowdown. On a CUDA device it runs the Triton kernels. Timings: median of ``--repeats`` after
``--warmup`` calls, alternating the compared paths. Usage (repository root)::

    python benchmarks/adapter_kernels.py                                    # all shapes, batches 1 8 64 (GPU)
    python benchmarks/adapter_kernels.py --shapes vit_b16.qkv --batches 1 8 --repeats 5   # a quick CPU run
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch  # noqa: E402
from charts import chart_report  # noqa: E402
from peft import LoraConfig, get_peft_model  # noqa: E402
from torch import nn  # noqa: E402

from verticals.kernels import enable_fused_lora, select_backend  # noqa: E402

# name -> (in_features, out_features, tokens per sample)
SHAPES: dict[str, tuple[int, int, int]] = {
    "vit_b16.qkv": (768, 2304, 197),
    "vit_b16.proj": (768, 768, 197),
    "vit_b16.fc1": (768, 3072, 197),
    "vit_b16.fc2": (3072, 768, 197),
    "sam_vit_b.qkv": (768, 2304, 196),  # 14x14 windowed attention (most SAM ViT-B blocks)
    "sam_vit_b.fc1": (768, 3072, 196),
    "whisper_tiny.q_proj": (384, 384, 1500),
    "whisper_tiny.fc1": (384, 1536, 1500),
    "llm_4096.proj": (4096, 4096, 1),  # one decoding token per sequence
}
SCRIPT = "benchmarks/adapter_kernels.py"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "kernels.md"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


STATISTICS = {"median": statistics.median, "min": min}


def _time(
    fns: dict[str, Callable[[], Any]],
    device: torch.device,
    warmup: int,
    repeats: int,
    statistic: str = "median",
) -> dict[str, float]:
    """Seconds per call of each function (``statistic`` over repeats), calls alternating (ABBA...).

    ``min`` is the robust choice on a machine shared with other jobs: load only ever adds time.
    """
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for repeat in range(repeats):
        for name in names if repeat % 2 == 0 else reversed(names):
            _sync(device)
            start = time.perf_counter()
            fns[name]()
            _sync(device)
            samples[name].append(time.perf_counter() - start)
    return {name: STATISTICS[statistic](values) for name, values in samples.items()}


def _layer(k: int, n: int, rank: int, adapters: int, device: torch.device, dtype: torch.dtype):
    torch.manual_seed(0)
    model = None
    for i in range(adapters):
        config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=["0"])
        if model is None:
            model = get_peft_model(nn.Sequential(nn.Linear(k, n)), config, adapter_name=f"adapter{i}")
        else:
            model.add_adapter(f"adapter{i}", config)
    for module in model.modules():
        if hasattr(module, "lora_B"):
            for linear in module.lora_B.values():
                nn.init.normal_(linear.weight, std=0.02)
    return model.to(device=device, dtype=dtype)


def _train_step(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        model(x).float().square().mean().backward()
        model.zero_grad(set_to_none=True)

    return step


def bench_shape(name: str, batch: int, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    k, n, tokens = SHAPES[name]
    dtype = getattr(torch, args.dtype)
    peft_model = _layer(k, n, args.rank, args.adapters, device, dtype)
    fused = copy.deepcopy(peft_model)
    enable_fused_lora(fused)
    merged = copy.deepcopy(peft_model)
    merged.merge_adapter()
    base = peft_model.base_model.model[0].base_layer
    x = torch.randn(batch, tokens, k, device=device, dtype=dtype)
    row = {"shape": name, "in": k, "out": n, "tokens": tokens, "batch": batch}
    with torch.no_grad():
        row["max_abs_diff"] = (fused(x) - peft_model(x)).abs().max().item()
        forward = _time({"base": lambda: base(x), "peft_merged": lambda: merged(x),
                         "peft_unmerged": lambda: peft_model(x), "verticals": lambda: fused(x)},
                        device, args.warmup, args.repeats, args.statistic)  # fmt: skip
    row.update({f"forward_{key}_ms": value * 1e3 for key, value in forward.items()})
    peft_model.train()
    fused.train()
    train = _time({"peft_unmerged": _train_step(peft_model, x), "verticals": _train_step(fused, x)},
                  device, args.warmup, args.repeats, args.statistic)  # fmt: skip
    row.update({f"train_{key}_ms": value * 1e3 for key, value in train.items()})
    peft_model.eval()
    fused.eval()
    names = ["__base__" if i % (args.adapters + 1) == args.adapters else f"adapter{i % (args.adapters + 1)}"
             for i in range(batch)]  # fmt: skip
    with torch.no_grad():
        row["mixed_max_abs_diff"] = (
            (fused(x, adapter_names=names) - peft_model(x, adapter_names=names)).abs().max().item()
        )
        mixed = _time({"peft_mixed": lambda: peft_model(x, adapter_names=names),
                       "verticals_mixed": lambda: fused(x, adapter_names=names)},
                      device, args.warmup, args.repeats, args.statistic)  # fmt: skip
    row.update({f"{key}_ms": value * 1e3 for key, value in mixed.items()})
    row["ratio_forward"] = row["forward_verticals_ms"] / row["forward_peft_unmerged_ms"]
    row["ratio_forward_vs_base"] = row["forward_verticals_ms"] / row["forward_base_ms"]
    row["ratio_train"] = row["train_verticals_ms"] / row["train_peft_unmerged_ms"]
    row["ratio_mixed"] = row["verticals_mixed_ms"] / row["peft_mixed_ms"]
    return row


def _machine(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {cpu}, {os.cpu_count()} logical cores, {torch.get_num_threads()} torch threads"


def _markdown(results: dict[str, Any]) -> str:
    path = results["backend"]
    lines = [
        "# Adapter kernels: fused LoRA and mixed batches vs peft",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}",
        f"- device: {results['device']}",
        f"- torch {results['torch']}, peft {results['peft']}, dtype {results['dtype']}, LoRA r={results['rank']}, "
        f"{results['adapters']} adapters in the mixed batch; {results.get('statistic', 'median')} of {results['repeats']} after "
        f"{results['warmup']} warm-up calls",
        f"- verticals path: **{path}**"
        + (
            " — a CPU run: `enable_fused_lora` dispatches to the PyTorch reference (peft's own forward), so "
            "the ratios measure that a CPU user loses nothing; Triton timings are pending a GPU run."
            if path == "reference"
            else " (Triton kernels)."
        ),
        "- times in ms per call on a shared machine (other jobs were running): compare ratios, not absolutes.",
        "",
        "| shape | in→out | tokens | batch | base | peft merged | peft unmerged | verticals | ratio fwd | "
        "train peft | train verticals | ratio train | mixed peft | mixed verticals | ratio mixed | max Δ |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results["rows"]:
        lines.append(
            f"| {r['shape']} | {r['in']}→{r['out']} | {r['tokens']} | {r['batch']} | {r['forward_base_ms']:.2f} | "
            f"{r['forward_peft_merged_ms']:.2f} | {r['forward_peft_unmerged_ms']:.2f} | "
            f"{r['forward_verticals_ms']:.2f} | {r['ratio_forward']:.3f} | {r['train_peft_unmerged_ms']:.2f} | "
            f"{r['train_verticals_ms']:.2f} | {r['ratio_train']:.3f} | {r['peft_mixed_ms']:.2f} | "
            f"{r['verticals_mixed_ms']:.2f} | {r['ratio_mixed']:.3f} | "
            f"{max(r['max_abs_diff'], r['mixed_max_abs_diff']):.1e} |"
        )
    summary = results["summary"]
    lines += [
        "",
        f"Geometric-mean ratio verticals/peft: forward {summary['forward']:.3f}, training step "
        f"{summary['train']:.3f}, mixed batch {summary['mixed']:.3f} (1.0 = same speed; < 1 = faster). "
        f"Largest output difference from peft: {summary['max_abs_diff']:.1e}. Median ratio over the rows "
        f"(robust to one row hit by another job): forward {summary['forward_median']:.3f}, training step "
        f"{summary['train_median']:.3f}, mixed batch {summary['mixed_median']:.3f}.",
        "",
    ]
    return "\n".join(lines)


def _geomean(values: Sequence[float]) -> float:
    return float(torch.tensor(values, dtype=torch.float64).log().mean().exp())


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, write the markdown report and the JSON beside it, return the results."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 8, 64])
    parser.add_argument(
        "--statistic", choices=sorted(STATISTICS), default="median",
        help="per-call time over the repeats; min resists load from other jobs",
    )  # fmt: skip
    parser.add_argument(
        "--tokens", type=int, default=None, help="override tokens per sample (smaller CPU runs)"
    )
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--adapters", type=int, default=8)
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default=None,
                        help="default: bfloat16 on CUDA, float32 on CPU")  # fmt: skip
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(list(argv) if argv is not None else None)
    device = torch.device(args.device)
    args.dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    saved_shapes = dict(SHAPES)
    if args.tokens is not None:
        SHAPES.update({name: (k, n, args.tokens if t > 1 else t) for name, (k, n, t) in SHAPES.items()})
    try:
        rows = [bench_shape(name, batch, args, device) for name in args.shapes for batch in args.batches]
    finally:
        SHAPES.clear()
        SHAPES.update(saved_shapes)
    import peft

    probe = torch.zeros(1, device=device)
    results = {
        "command": " ".join(
            ["python", SCRIPT, *map(shlex.quote, argv if argv is not None else sys.argv[1:])]
        ),
        "argv": list(argv) if argv is not None else sys.argv[1:],
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": _machine(device),
        "backend": select_backend(probe),
        "torch": torch.__version__,
        "peft": peft.__version__,
        **{
            key: getattr(args, key) for key in ("dtype", "rank", "adapters", "warmup", "repeats", "statistic")
        },
        "rows": rows,
        "summary": {
            "forward": _geomean([r["ratio_forward"] for r in rows]),
            "train": _geomean([r["ratio_train"] for r in rows]),
            "mixed": _geomean([r["ratio_mixed"] for r in rows]),
            "max_abs_diff": max(max(r["max_abs_diff"], r["mixed_max_abs_diff"]) for r in rows),
            **{
                f"{key}_median": statistics.median(r[f"ratio_{key}"] for r in rows)
                for key in ("forward", "train", "mixed")
            },
        },
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(_markdown(results))
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    chart_report(args.output, results)
    print(_markdown(results))
    return results


if __name__ == "__main__":
    main()
