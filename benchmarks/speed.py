"""Speed benchmark: what adapters cost at inference, as a verticals user gets them.

Parts (``--parts``), after item 5 of the benchmarks issue:

- ``merged`` (item 5 (d), implemented): merged vs unmerged vs base inference on the shapes of ViT-B/16,
  Whisper tiny and MiniLM. "Done" means merged inference within 1.05x of the base model, with the unmerged
  figures beside it.
- ``caching`` (items 5 (a)-(c)) and ``whisper_length`` (item 5 (e)) are training benchmarks with scripts of their
  own: ``benchmarks/prefix_cache.py`` and ``benchmarks/whisper_length.py``; ``--parts`` names them when asked.

What ``merged`` measures, per backbone shape (``--shapes``), forward only (eval mode, ``torch.inference_mode``):

- ``base``: the backbone as ``verticals.core.registry.build_model`` builds it, no adapter;
- ``unmerged``: the same network after ``verticals.core.adapters.api.adapt`` with LoRA r=8 (alpha 16) on the
  target preset its packaged configs use (``attention`` for the timm ViT and MiniLM, ``qv`` for Whisper) and,
  as a second row, on ``all-linear`` (``--targets``), with the configs' ``trainable`` modules beside it;
- ``merged``: that adapter merged the way ``verticals predict`` merges it
  (``verticals.core.adapters.merging.merge_for_predict``: the weights hold the update, peft's adapter layers
  stay in place and skip their adapter branch);
- ``exported``: the way ``verticals export`` writes it (``verticals.core.adapters.io.merge``, peft's
  ``merge_and_unload``: a plain module without adapter layers).

The LoRA ``B`` matrices are drawn at random (seeded, std 0.02) instead of peft's zeros, so the adapter
changes the outputs and "merged = unmerged" is a real check: the largest output difference merged vs
unmerged is reported (floating-point rounding only), beside the adapter's own effect (unmerged vs base).
Every timed call is one batch; all variants of a shape run in ABBA order (``_common.alternate``: the
order reversed on every other repeat) after ``--warmup`` untimed calls each, so drifting machine load hits
them alike. Reported: the median time per batch, and each variant's ratio to ``base`` as the median over
repeats of ``variant / base`` in the same repeat, with a 95% bootstrap interval of that median and the
min-max over repeats.

Backbones (``--tiny`` swaps each for a tiny random model of the same class, for the test: timings
meaningless):

- ``vit_b16``: timm ``vit_base_patch16_224``, random init (no ViT weights here; the shape sets the speed),
  a batch of 224 px images, classifier head of 10 classes;
- ``whisper_tiny``: the real converted tiny.en (``speech.whisper``, ``source: tiny.en``) on the 10 s window
  of the speech configs, one encoder + decoder forward with ``--decoder-tokens`` teacher-forced tokens;
- ``whisper_tiny_decode``: the same model decoding greedily exactly ``--decoder-tokens`` new tokens
  (end-of-text suppressed until then, as ``benchmarks/speech.py`` does), through ``WhisperModule.generate``;
- ``minilm``: the time-series ``timeseries.patch_transformer`` on the bundled MiniLM-L6 encoder, as
  ``timeseries/gunpoint_lora`` builds it (GunPoint series of 150 steps, patches of 8, stride 4).

Usage (from the repository root; run on a quiet machine, timings on a loaded one mean little)::

    python benchmarks/speed.py                                          # every shape, 10 repeats
    python benchmarks/speed.py --shapes vit_b16 minilm --repeats 20 --batch vit_b16=16
    python benchmarks/speed.py --tiny --repeats 3 --output /tmp/speed.md   # seconds: a smoke test

Writes ``benchmarks/results/speed.md`` (or ``--output``) and the raw numbers to the ``.json`` beside it.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import shlex
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import alternate, machine, machine_line, write_reports
from charts import chart_report
from torch import nn

from verticals.core.adapters.api import AdapterSpec, adapt
from verticals.core.adapters.io import merge as merge_and_unload
from verticals.core.adapters.merging import merge_for_predict, merge_refusal
from verticals.core.quiet import silence_log_messages
from verticals.core.registry import build_model

SCRIPT = "benchmarks/speed.py"
DEFAULT_OUTPUT = Path(__file__).resolve().parent / "results" / "speed.md"
#: Part name -> the issue's item 5 letter(s): the parts this script runs.
IMPLEMENTED_PARTS = {"merged": "(d)"}
#: Parts measured by scripts of their own (training, not inference): part name -> (item letters, script).
ELSEWHERE_PARTS = {
    "caching": ("(a)-(c)", "benchmarks/prefix_cache.py"),
    "whisper_length": ("(e)", "benchmarks/whisper_length.py"),
}
VARIANTS = ("base", "unmerged", "merged", "exported")
ADAPTED_VARIANTS = VARIANTS[1:]
#: The issue's bar: merged inference within this factor of the base model.
TARGET_RATIO = 1.05
CONFIDENCE = 0.95
LORA_B_STD = 0.02


# -- the shapes --------------------------------------------------------------------------------------------
@dataclass
class Workload:
    """One shape, built: the base network and the call that is timed on each variant of it.

    Args:
        model: the backbone in words (what was built, from where).
        call: the timed call in words.
        network: the base network (eval mode); each variant adapts a deep copy.
        run: one timed call of a variant: ``run(model) -> outputs``.
        compare: ``compare(outputs, reference) -> dict`` of how far apart two variants' outputs are.
    """

    model: str
    call: str
    network: nn.Module
    run: Callable[[nn.Module], Any]
    compare: Callable[[Any, Any], dict[str, Any]]


@dataclass(frozen=True)
class Shape:
    """A backbone shape the ``merged`` part measures.

    Args:
        build: ``build(batch, tiny, args) -> Workload``.
        batch: the default batch (the packaged configs' batch size where there is one).
        tiny_batch: the batch of ``--tiny`` runs.
        targets: the LoRA target preset the backbone's packaged configs use (``--targets default``).
        trainable: the modules those configs train in full beside the adapter (peft's ``modules_to_save``).
    """

    build: Callable[[int, bool, argparse.Namespace], Workload]
    batch: int
    tiny_batch: int
    targets: str
    trainable: tuple[str, ...] = ()


def _max_abs_diff(outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    return {
        "max_abs_diff": float((outputs.float() - reference.float()).abs().max()),
        "output_scale": float(reference.float().abs().max()),
    }


def _differing_tokens(outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, Any]:
    if outputs.shape != reference.shape:
        return {"differing_tokens": None, "tokens": int(reference.numel()), "note": "different lengths"}
    return {"differing_tokens": int((outputs != reference).sum()), "tokens": int(reference.numel())}


def _vit(batch: int, tiny: bool, args: argparse.Namespace) -> Workload:
    name, size = ("test_vit", 32) if tiny else ("vit_base_patch16_224", 224)
    network = build_model(
        {
            "class_path": "timm.create_model",
            "init_args": {"model_name": name, "pretrained": False, "num_classes": 10, "img_size": size},
        }
    )
    images = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0))
    return Workload(
        model=f"timm `{name}`, random init (shape only), {size} px, 10-class head",
        call=f"forward of a batch of {batch} images",
        network=network.eval(),
        run=lambda model: model(images),
        compare=_max_abs_diff,
    )


#: The Whisper network both Whisper shapes time, built once per run (``main`` empties it): the variants adapt
#: deep copies, so the base network itself is never changed.
_WHISPER: dict[bool, tuple[nn.Module, str, int]] = {}


def _whisper_network(tiny: bool) -> tuple[nn.Module, str, int]:
    if tiny not in _WHISPER:
        source, positions = ("tiny-random", 50) if tiny else ("tiny.en", 500)
        network = build_model("speech.whisper", source=source, max_source_positions=positions)
        _WHISPER[tiny] = network.eval(), source, positions
    return _WHISPER[tiny]


def _whisper(batch: int, tiny: bool, args: argparse.Namespace) -> Workload:
    network, source, positions = _whisper_network(tiny)
    generator = torch.Generator().manual_seed(0)
    features = torch.randn(batch, 80, 2 * positions, generator=generator)
    config = network.backbone.config
    text = torch.randint(0, config.eos_token_id, (batch, args.decoder_tokens - 1), generator=generator)
    start = torch.full((batch, 1), config.decoder_start_token_id)
    decoder_input_ids = torch.cat([start, text], dim=1)
    return Workload(
        model=f"Whisper `{source}` (`speech.whisper`), {positions // 50} s encoder window ({positions} positions)",
        call=f"encoder + decoder forward of a batch of {batch} utterances, {args.decoder_tokens} decoder tokens",
        network=network,
        run=lambda model: model(input_features=features, decoder_input_ids=decoder_input_ids).logits,
        compare=_max_abs_diff,
    )


def _whisper_decode(batch: int, tiny: bool, args: argparse.Namespace) -> Workload:
    network, source, positions = _whisper_network(tiny)
    features = torch.randn(batch, 80, 2 * positions, generator=torch.Generator().manual_seed(0))
    tokens = args.decoder_tokens
    return Workload(
        model=f"Whisper `{source}` (`speech.whisper`), {positions // 50} s encoder window ({positions} positions)",
        call=f"greedy decoding of exactly {tokens} new tokens for a batch of {batch} utterances (`generate`)",
        network=network,
        run=lambda model: model.generate(
            input_features=features, max_new_tokens=tokens, min_new_tokens=tokens
        ),
        compare=_differing_tokens,
    )


def _minilm(batch: int, tiny: bool, args: argparse.Namespace) -> Workload:
    encoder, layers, length = ("tiny-bert", None, 32) if tiny else ("minilm", 6, 150)
    network = build_model(
        "timeseries.patch_transformer",
        input_shape=(1, length),
        num_outputs=2,
        task="classification",
        model_args={"encoder": encoder, "num_layers": layers, "patch_length": 8, "stride": 4},
    )
    series = torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(0))
    return Workload(
        model=f"`timeseries.patch_transformer` on `{encoder}`"
        + (f" ({layers} layers)" if layers else "")
        + f", series of {length} steps, patches of 8 with stride 4 ({network.num_patches} tokens)",
        call=f"forward of a batch of {batch} series",
        network=network.eval(),
        run=lambda model: model(series),
        compare=_max_abs_diff,
    )


SHAPES: dict[str, Shape] = {
    "vit_b16": Shape(build=_vit, batch=8, tiny_batch=2, targets="attention", trainable=("head",)),
    "whisper_tiny": Shape(build=_whisper, batch=8, tiny_batch=2, targets="qv"),
    "whisper_tiny_decode": Shape(build=_whisper_decode, batch=8, tiny_batch=2, targets="qv"),
    "minilm": Shape(
        build=_minilm, batch=16, tiny_batch=2, targets="attention", trainable=("patch_embedding", "head")
    ),
}


# -- timing and statistics ---------------------------------------------------------------------------------
def time_alternating(
    calls: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, list[float]]:
    """Seconds of each call per repeat, calls in ABBA order (``_common.alternate``) after ``warmup`` untimed
    rounds in the given order."""
    for _ in range(warmup):
        for call in calls.values():
            call()

    def timed(call: Callable[[], Any]) -> Callable[[int], float]:
        def run(repeat: int) -> float:
            start = clock()
            call()
            return clock() - start

        return run

    return alternate({name: timed(call) for name, call in calls.items()}, repeats)


def _plain(value: float) -> float | None:
    """A float for the JSON: None for NaN (JSON has no NaN)."""
    return None if math.isnan(value) else float(value)


def ratio_summary(
    seconds: Sequence[float], base: Sequence[float], resamples: int, seed: int = 0
) -> dict[str, Any]:
    """``variant / base`` per repeat (the two timed in the same repeat): the median, a percentile bootstrap
    interval of the median over repeats (None below two repeats), the min and max."""
    ratios = np.asarray(seconds, dtype=float) / np.asarray(base, dtype=float)
    low = high = math.nan
    if len(ratios) >= 2 and resamples > 0:
        rng = np.random.default_rng(seed)
        medians = np.median(ratios[rng.integers(0, len(ratios), (resamples, len(ratios)))], axis=1)
        low, high = np.quantile(medians, [(1 - CONFIDENCE) / 2, (1 + CONFIDENCE) / 2])
    return {
        "median": float(np.median(ratios)),
        "low": _plain(float(low)),
        "high": _plain(float(high)),
        "min": float(ratios.min()),
        "max": float(ratios.max()),
        "per_repeat": ratios.tolist(),
    }


def _randomise_lora_b(model: nn.Module, seed: int) -> None:
    """Draw every LoRA ``B`` matrix from N(0, 0.02²) (peft starts them at zero: an adapter that changes
    nothing would make "merged = unmerged" trivially true)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            for linear in getattr(module, "lora_B", {}).values():
                linear.weight.normal_(0.0, LORA_B_STD, generator=generator)


def _adapted_modules(model: nn.Module) -> int:
    return sum(1 for module in model.modules() if len(getattr(module, "lora_A", {})) > 0)


# -- the merged part ---------------------------------------------------------------------------------------
def _variants(workload: Workload, shape: Shape, targets: str, args: argparse.Namespace) -> dict[str, Any]:
    """The adapted, merged and exported copies of the workload's network for one target preset."""
    spec = AdapterSpec(
        method="lora",
        targets=shape.targets if targets == "default" else targets,
        trainable=list(shape.trainable),
        options={"r": args.rank, "lora_alpha": 2 * args.rank},
    )
    unmerged = adapt(copy.deepcopy(workload.network), spec)
    _randomise_lora_b(unmerged, seed=args.seed)
    unmerged.eval()
    refusal = merge_refusal(unmerged)
    merged = copy.deepcopy(unmerged)
    if not merge_for_predict(merged):
        raise RuntimeError(f"merge_for_predict did not merge LoRA on {spec.targets!r}: {refusal}")
    exported = merge_and_unload(copy.deepcopy(unmerged)).eval()
    trainable = sum(p.numel() for p in unmerged.parameters() if p.requires_grad)
    return {
        "spec": spec,
        "models": {"unmerged": unmerged, "merged": merged.eval(), "exported": exported},
        "adapted_modules": _adapted_modules(unmerged),
        "trainable_parameters": trainable,
    }


def _timing(seconds: Sequence[float], batch: int) -> dict[str, Any]:
    median = statistics.median(seconds)
    return {
        "median_ms": median * 1e3,
        "min_ms": min(seconds) * 1e3,
        "max_ms": max(seconds) * 1e3,
        "samples_per_s": batch / median,
        "seconds": list(seconds),
    }


def bench_shape(
    name: str, batch: int, args: argparse.Namespace, log: Callable[[str], None]
) -> dict[str, Any]:
    """Every variant of one shape, timed together in ABBA order; one row per target preset."""
    shape = SHAPES[name]
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        workload = shape.build(batch, args.tiny, args)
        adapters = {targets: _variants(workload, shape, targets, args) for targets in args.targets}
    models: dict[str, nn.Module] = {"base": workload.network}
    for targets, adapter in adapters.items():
        models.update({f"{targets}/{variant}": model for variant, model in adapter["models"].items()})
    build_seconds = time.perf_counter() - started
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outputs = {key: workload.run(model) for key, model in models.items()}  # also the first warm-up
        log(f"{name}: built and checked in {build_seconds:.0f} s; timing {len(models)} variants")
        seconds = time_alternating(
            {key: (lambda model=model: workload.run(model)) for key, model in models.items()},
            repeats=args.repeats,
            warmup=max(args.warmup - 1, 0),
        )
    parameters = sum(p.numel() for p in workload.network.parameters())
    rows = []
    for targets, adapter in adapters.items():
        unmerged_key = f"{targets}/unmerged"
        times = {"base": _timing(seconds["base"], batch)}
        times.update({v: _timing(seconds[f"{targets}/{v}"], batch) for v in ADAPTED_VARIANTS})
        rows.append(
            {
                "shape": name,
                "model": workload.model,
                "call": workload.call,
                "batch": batch,
                "parameters": parameters,
                "targets": adapter["spec"].targets,
                "trainable": list(adapter["spec"].trainable),
                "adapted_modules": adapter["adapted_modules"],
                "trainable_parameters": adapter["trainable_parameters"],
                "times": times,
                "ratios": {
                    v: ratio_summary(seconds[f"{targets}/{v}"], seconds["base"], args.bootstrap, args.seed)
                    for v in ADAPTED_VARIANTS
                },
                "differences": {
                    "merged_vs_unmerged": workload.compare(
                        outputs[f"{targets}/merged"], outputs[unmerged_key]
                    ),
                    "exported_vs_unmerged": workload.compare(
                        outputs[f"{targets}/exported"], outputs[unmerged_key]
                    ),
                    "unmerged_vs_base": workload.compare(outputs[unmerged_key], outputs["base"]),
                },
                "build_seconds": build_seconds,
            }
        )
    for row in rows:
        ratios = row["ratios"]
        log(
            f"  {name} [{row['targets']}]: base {row['times']['base']['median_ms']:.1f} ms; x base: unmerged "
            f"{ratios['unmerged']['median']:.3f}, merged {ratios['merged']['median']:.3f}, exported "
            f"{ratios['exported']['median']:.3f}"
        )
    return rows


def merged_summary(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The issue's check over every row: is merged (and exported) inference within 1.05x of the base model?"""

    def within(variant: str) -> dict[str, Any]:
        ratios = [row["ratios"][variant]["median"] for row in rows]
        highs = [row["ratios"][variant]["high"] for row in rows]
        return {
            "worst_median": max(ratios),
            "rows_within": sum(ratio <= TARGET_RATIO for ratio in ratios),
            "rows_within_by_interval": sum(high is not None and high <= TARGET_RATIO for high in highs),
            "rows": len(rows),
        }

    differences = [
        row["differences"][key].get("max_abs_diff")
        for row in rows
        for key in ("merged_vs_unmerged", "exported_vs_unmerged")
    ]
    differences = [d for d in differences if d is not None]
    return {
        "target_ratio": TARGET_RATIO,
        "merged": within("merged"),
        "exported": within("exported"),
        "unmerged_worst_median": max(row["ratios"]["unmerged"]["median"] for row in rows),
        "max_abs_diff": max(differences) if differences else None,
    }


# -- the report --------------------------------------------------------------------------------------------
def _ratio_cell(entry: Mapping[str, Any]) -> str:
    low, high = entry.get("low"), entry.get("high")
    interval = f" [{low:.3f}, {high:.3f}]" if low is not None and high is not None else ""
    return f"{entry['median']:.3f}{interval}"


def _verdict(entry: Mapping[str, Any]) -> str:
    high = entry.get("high")
    if high is not None and high <= TARGET_RATIO:
        return "yes"
    if entry["median"] <= TARGET_RATIO:
        return "yes (median; interval reaches above)" if high is not None else "yes (median)"
    return "**no**"


def _difference_cell(difference: Mapping[str, Any]) -> str:
    if "differing_tokens" in difference:
        differing = difference["differing_tokens"]
        return f"{'–' if differing is None else differing} of {difference['tokens']} tokens differ"
    return f"{difference['max_abs_diff']:.1e} (outputs up to {difference['output_scale']:.1f})"


def render_markdown(results: Mapping[str, Any]) -> str:
    """The report: header (command, machine, threads, date, what was not run), then the merged table."""
    settings = results["settings"]
    not_run = [
        *(
            f"part `{p}` (item 5 {letters}): measured by `{script}`"
            for p, (letters, script) in ELSEWHERE_PARTS.items()
        ),
        *results.get("not_run", []),
    ]
    lines = [
        "# Speed: what adapters cost at inference",
        "",
        f"- command: `{results['command']}`",
        f"- date: {results['date']}; {results['minutes']:.1f} minutes",
        f"- machine: {machine_line(results['machine'])}",
        f"- torch threads: {results['machine']['torch_threads']}",
        f"- parts run: {', '.join(f'`{p}` (item 5 {IMPLEMENTED_PARTS[p]})' for p in results['parts'])}",
        f"- not run: {'; '.join(not_run)}",
    ]
    if settings["tiny"]:
        lines.append(
            "- **`--tiny` smoke run**: tiny random models of the same classes; the timings mean nothing, only "
            "that the script works."
        )
    merged = results.get("merged")
    if merged:
        summary = merged["summary"]
        difference = summary["max_abs_diff"]
        lines += [
            "",
            "## Merged vs unmerged vs base inference (item 5 (d))",
            "",
            f"Done means: merged inference within {TARGET_RATIO}x of the base model, the unmerged figures beside "
            f"it. Merged (as `verticals predict` merges) is within {TARGET_RATIO}x on "
            f"{summary['merged']['rows_within']} of {summary['merged']['rows']} rows by the median "
            f"({summary['merged']['rows_within_by_interval']} with the whole 95% interval below it; worst "
            f"median {summary['merged']['worst_median']:.3f}); exported (as `verticals export` writes it) on "
            f"{summary['exported']['rows_within']} (worst {summary['exported']['worst_median']:.3f}). Unmerged "
            f"LoRA costs up to {summary['unmerged_worst_median']:.3f}x the base model. Largest output "
            "difference merged or exported vs unmerged: "
            + ("–" if difference is None else f"{difference:.1e}")
            + ".",
            "",
            f"LoRA r={settings['rank']}, alpha {2 * settings['rank']}, `B` drawn at random (std {LORA_B_STD}, "
            f"seed {settings['seed']}) so the adapter changes the outputs; {settings['repeats']} repeat(s) in ABBA "
            f"order over all variants of a shape after {settings['warmup']} warm-up call(s) each; one timed "
            f"call = one batch. Times: median ms per batch. Ratios: median over repeats of variant / base "
            f"timed in the same repeat, [95% bootstrap interval of that median, {settings['bootstrap']} "
            "resamples]. `merged`: `merge_for_predict` (peft's `merge_adapter`, adapter layers kept, as "
            "`verticals predict`); `exported`: `merge_and_unload` (a plain module, as `verticals export`).",
            "",
            "| shape | LoRA targets | batch | base ms | unmerged ms | merged ms | exported ms | unmerged / base "
            "| merged / base | exported / base | merged within 1.05x | merged vs unmerged: max abs diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in merged["rows"]:
            times, ratios = row["times"], row["ratios"]
            lines.append(
                f"| {row['shape']} | `{row['targets']}` ({row['adapted_modules']} layers) | {row['batch']} | "
                + " | ".join(f"{times[v]['median_ms']:.1f}" for v in VARIANTS)
                + " | "
                + " | ".join(_ratio_cell(ratios[v]) for v in ADAPTED_VARIANTS)
                + f" | {_verdict(ratios['merged'])} | "
                f"{_difference_cell(row['differences']['merged_vs_unmerged'])} |"
            )
        lines += [
            "",
            "Min-max of the per-repeat ratios, throughput, and the adapter's own effect on the outputs (unmerged "
            "vs base: the comparison above is not trivially zero):",
            "",
            "| shape | LoRA targets | unmerged / base | merged / base | exported / base | base samples/s | "
            "merged samples/s | exported vs unmerged | unmerged vs base |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in merged["rows"]:
            ratios, times, differences = row["ratios"], row["times"], row["differences"]
            lines.append(
                f"| {row['shape']} | `{row['targets']}` | "
                + " | ".join(f"{ratios[v]['min']:.3f}–{ratios[v]['max']:.3f}" for v in ADAPTED_VARIANTS)
                + f" | {times['base']['samples_per_s']:.2f} | {times['merged']['samples_per_s']:.2f} | "
                f"{_difference_cell(differences['exported_vs_unmerged'])} | "
                f"{_difference_cell(differences['unmerged_vs_base'])} |"
            )
        lines += ["", "### Shapes", ""]
        seen = set()
        for row in merged["rows"]:
            if row["shape"] in seen:
                continue
            seen.add(row["shape"])
            lines.append(
                f"- `{row['shape']}`: {row['model']}; {row['parameters'] / 1e6:.1f}M parameters; timed call: "
                f"{row['call']}; built in {row['build_seconds']:.0f} s."
            )
        lines.append("")
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------------------
def _batches(
    entries: Sequence[str], shapes: Sequence[str], tiny: bool, parser: argparse.ArgumentParser
) -> dict[str, int]:
    """``--batch`` entries (``N`` for every shape, or ``shape=N``) over the defaults."""
    batches = {name: SHAPES[name].tiny_batch if tiny else SHAPES[name].batch for name in shapes}
    for entry in entries:
        name, _, value = entry.rpartition("=")
        if name and name not in SHAPES:
            parser.error(f"--batch {entry!r}: unknown shape {name!r}; shapes: {', '.join(SHAPES)}.")
        if not value.isdigit() or int(value) < 1:
            parser.error(f"--batch {entry!r}: give a positive whole number, N or shape=N.")
        for shape in [name] if name else shapes:
            if shape in batches:
                batches[shape] = int(value)
    return batches


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--parts", nargs="+", default=list(IMPLEMENTED_PARTS),
        help=f"implemented here: {', '.join(IMPLEMENTED_PARTS)}; "
        + "; ".join(f"{part}: see {script}" for part, (_, script) in ELSEWHERE_PARTS.items()),
    )  # fmt: skip
    parser.add_argument("--shapes", nargs="+", choices=list(SHAPES), default=list(SHAPES))
    parser.add_argument(
        "--targets", nargs="+", default=["default", "all-linear"],
        help="LoRA target presets, one row each; `default`: the preset of each backbone's packaged configs",
    )  # fmt: skip
    parser.add_argument("--batch", nargs="+", default=[], help="N (every shape) or shape=N")
    parser.add_argument("--repeats", type=int, default=10, help="timed calls per variant (ABBA order)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per variant first (at least 1)")
    parser.add_argument("--rank", type=int, default=8, help="LoRA r (alpha = 2r)")
    parser.add_argument(
        "--decoder-tokens", type=int, default=32, help="Whisper decoder tokens (forward, decoding)"
    )
    parser.add_argument("--bootstrap", type=int, default=2000, help="bootstrap resamples of the repeats")
    parser.add_argument("--seed", type=int, default=0, help="seed of the LoRA B draw and the bootstrap")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    parser.add_argument("--tiny", action="store_true", help="tiny random models: a smoke test, not timings")
    parser.add_argument("--output", type=Path, default=None, help=f"default {DEFAULT_OUTPUT}")
    args = parser.parse_args(list(argv))
    for part in args.parts:
        if part in ELSEWHERE_PARTS:
            letters, script = ELSEWHERE_PARTS[part]
            parser.error(
                f"part {part!r} (issue item 5 {letters}) is a training benchmark: run `python {script}`."
            )
        if part not in IMPLEMENTED_PARTS:
            parser.error(
                f"unknown part {part!r}; implemented here: {', '.join(IMPLEMENTED_PARTS)}; elsewhere: "
                f"{', '.join(ELSEWHERE_PARTS)}."
            )
    if args.repeats < 1 or args.warmup < 1 or args.rank < 1 or args.decoder_tokens < 2:
        parser.error("--repeats, --warmup and --rank must be at least 1, --decoder-tokens at least 2.")
    if args.tiny and args.output is None:
        parser.error(f"--tiny timings mean nothing: give --output (not the committed {DEFAULT_OUTPUT.name}).")
    args.output = args.output or DEFAULT_OUTPUT
    args.batches = _batches(args.batch, args.shapes, args.tiny, parser)
    args.parts = list(dict.fromkeys(args.parts))
    args.targets = list(dict.fromkeys(args.targets))
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the parts asked for, write the markdown report and the JSON beside it, return the results."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    # Exactly --decoder-tokens new tokens need `min_new_tokens`; transformers then notes on every call that the
    # generation config's `min_length` is overridden, which is what is wanted.
    silence_log_messages("transformers.generation.utils", ("Both `min_new_tokens`",))
    started = time.perf_counter()
    env = machine(["peft", "transformers", "timm"])

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    results: dict[str, Any] = {
        "benchmark": "speed",
        "command": " ".join(["python", SCRIPT, *map(shlex.quote, argv)]),
        "argv": argv,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": env,
        "parts": args.parts,
        "not_run": [
            *(f"shape `{name}` (not in --shapes)" for name in SHAPES if name not in args.shapes),
            "CUDA (a CPU run)" if not torch.cuda.is_available() else "CUDA (the benchmark times the CPU)",
            "the fused LoRA kernels (`fused_lora`; see kernels.md)",
        ],
        "settings": {
            "tiny": args.tiny,
            "shapes": args.shapes,
            "batches": args.batches,
            "targets": args.targets,
            "rank": args.rank,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "decoder_tokens": args.decoder_tokens,
            "bootstrap": args.bootstrap,
            "seed": args.seed,
        },
    }
    if "merged" in args.parts:
        rows: list[dict[str, Any]] = []
        try:
            for name in args.shapes:
                rows.extend(bench_shape(name, args.batches[name], args, log))
        finally:
            _WHISPER.clear()
        results["merged"] = {"rows": rows, "summary": merged_summary(rows)}
    results["minutes"] = (time.perf_counter() - started) / 60
    markdown, _ = write_reports(results, args.output, render_markdown)
    chart_report(args.output, results)
    print(markdown)
    return results


if __name__ == "__main__":
    main()
