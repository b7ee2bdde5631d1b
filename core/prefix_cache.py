"""Frozen-prefix caching: compute once what no training step can change.

Every module that runs before the first module with a trainable parameter is frozen; when it is also
deterministic (no dropout or batch statistics in training mode), its output for a given input never changes.
:class:`FrozenPrefixCache` records that output per sample the first time the sample is seen and, from then on,
replays it instead of running the prefix: a tuned decoder never runs its frozen image encoder twice on an image, a
linear probe never runs its encoder twice on a sample, LoRA on an encoder's last stages skips the first ones.

It works on any backbone, found from one traced forward:

- the *prefix* is the top-most modules whose call ends before the first trainable module's starts;
- the *cached set* is the fewest of them, taken from the last one backwards, whose outputs the rest of the forward
  needs: replaying the cached set and filling every other prefix output with NaN must give the real output (so a
  skip connection across the cut is found, not silently broken);
- a cached output that does not change when the batch rows of the model's other inputs (prompts) are permuted is
  keyed on the first input alone, otherwise on every tensor input;
- a cached output must not change when the trained parameters do (checked once, by perturbing them).

A frozen computation that a method runs beside the main path, from a hook say (Point-PEFT's point prior runs the
frozen backbone once more on the raw cloud), is cacheable when it runs through a :class:`FrozenBranch` registered
on the network: the trace then sees it as one frozen module, and what runs inside it is not part of the main path.

Keys are fingerprints of each sample's content, so shuffling, validation data and sliding windows need no index,
and a randomly augmented sample is simply a new key (computed, not replayed): caching changes no result, except
by storing in float16 when asked to. Calls that do not go through the network's own forward (a task's
``forward_features``) run uncached. The cache lives for the run (in memory, or in files under ``directory``);
a resumed run fills it again.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

__all__ = ["FrozenBranch", "FrozenPrefixCache", "PrefixCacheError", "PrefixCacheOptions"]

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_ROWS_PER_BLOCK = 256
#: Replays tried while looking for the cut, at most (each is one forward of the set-up batch).
_MAX_TRIES = 24
#: What to do when the cache reaches its ceiling (the up-front and the "full" warnings say it alike).
_CEILING_FIXES = (
    "Raise `cache_frozen_prefix.max_gb`, store float16 (`dtype: float16`, half the size) or keep it on disk "
    "(`directory: PATH`)."
)


class PrefixCacheError(ValueError):
    """The network has no frozen prefix that can be cached (said why, and how to run without the cache)."""


@dataclasses.dataclass(frozen=True)
class PrefixCacheOptions:
    """How a task caches its frozen prefix (the task's ``cache_frozen_prefix`` argument).

    Args:
        enabled: cache the frozen prefix's output per sample (off by default: it costs memory).
        dtype: ``float32`` (replays exactly what was computed) or ``float16`` (half the memory; changes the
            rest of the forward's input by float16 rounding).
        max_gb: the most the cache may hold; samples beyond it are computed every step, and the run says so.
        directory: keep the cache in memory-mapped files under this folder instead of in memory (for caches
            larger than the memory to spare); deleted when the run ends.
    """

    enabled: bool = False
    dtype: str = "float32"
    max_gb: float = 4.0
    directory: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ValueError(
                f"`cache_frozen_prefix.dtype` must be one of {sorted(_DTYPES)}, got {self.dtype!r}."
            )
        if not (isinstance(self.max_gb, (int, float)) and math.isfinite(self.max_gb) and self.max_gb > 0):
            raise ValueError(
                f"`cache_frozen_prefix.max_gb` must be a positive number of GB, got {self.max_gb!r}."
            )

    @classmethod
    def coerce(cls, value: bool | dict[str, Any] | PrefixCacheOptions | None) -> PrefixCacheOptions:
        """From the task argument: a bool (on/off with the defaults), a dict of fields (on unless it says
        ``enabled: false``), or options."""
        if isinstance(value, cls):
            return value
        if value is None or isinstance(value, bool):
            return cls(enabled=bool(value))
        if isinstance(value, dict):
            unknown = sorted(set(value) - {field.name for field in dataclasses.fields(cls)})
            if unknown:
                raise ValueError(
                    f"`cache_frozen_prefix` has no option {unknown}; it takes enabled, dtype, max_gb, directory."
                )
            return cls(**{"enabled": True, **value})
        raise ValueError(
            f"`cache_frozen_prefix` must be true/false or a dict of options, got {type(value).__name__}."
        )


class FrozenBranch(nn.Module):
    """A frozen side computation of a network, declared so that frozen-prefix caching can replay it.

    A method that computes something from the raw input with frozen weights only, besides the main path (from a
    forward pre-hook, say), runs it through a ``FrozenBranch`` registered as a submodule of the network. The
    cache's trace then sees one module where it would otherwise see the backbone's modules running twice, and can
    replay the branch's output per sample like any prefix module's. The declaration is checked, not trusted: a
    replayed branch must reproduce the network's output, and its output must not change when the trained
    parameters do.

    Args:
        function: ``function(*inputs)`` returning a batch-first tensor or a tuple of them; run without autograd.
        description: what it computes (for ``repr`` and messages).
    """

    def __init__(self, function: Callable[..., Any], description: str = "") -> None:
        super().__init__()
        self.function = function
        self.description = description

    def forward(self, *inputs: Any) -> Any:
        """``function(*inputs)`` under ``torch.no_grad()``."""
        with torch.no_grad():
            return self.function(*inputs)

    def extra_repr(self) -> str:
        return self.description


@dataclasses.dataclass
class _Call:
    name: str
    module: nn.Module
    start: int
    end: int = -1
    output: Any = None


class _RowStore:
    """Rows of one fixed shape and dtype, by key, in blocks of memory or memory-mapped files, up to a byte ceiling."""

    def __init__(self, shape: tuple[int, ...], dtype: torch.dtype, directory: Path | None, max_bytes: float):
        self.shape, self.dtype, self.directory, self.max_bytes = shape, dtype, directory, max_bytes
        self.row_bytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        self.rows: dict[bytes, int] = {}
        self.blocks: list[torch.Tensor] = []

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.row_bytes

    def full(self) -> bool:
        return (len(self.rows) + 1) * self.row_bytes > self.max_bytes

    def put(self, key: bytes, row: torch.Tensor) -> None:
        index = len(self.rows)
        if index == len(self.blocks) * _ROWS_PER_BLOCK:
            self.blocks.append(self._new_block())
        self.blocks[-1][index % _ROWS_PER_BLOCK].copy_(row.detach().to("cpu", self.dtype))
        self.rows[key] = index

    def get(self, keys: list[bytes]) -> torch.Tensor:
        return torch.stack(
            [
                self.blocks[index // _ROWS_PER_BLOCK][index % _ROWS_PER_BLOCK]
                for index in map(self.rows.__getitem__, keys)
            ]
        )

    def _new_block(self) -> torch.Tensor:
        shape = (_ROWS_PER_BLOCK, *self.shape)
        if self.directory is None:
            return torch.empty(shape, dtype=self.dtype)
        path = self.directory / f"{id(self):x}-{len(self.blocks)}.bin"
        numpy_dtype = np.float16 if self.dtype == torch.float16 else np.float32
        return torch.from_numpy(np.memmap(path, dtype=numpy_dtype, mode="w+", shape=shape))


class FrozenPrefixCache:
    """Cache the frozen prefix of ``network`` (see the module docstring); attached on construction, set up on the
    network's first forward in training mode.

    Args:
        network: the adapted network (its trainable parameters already marked).
        options: dtype, memory ceiling and directory.
        expected_samples: how many distinct samples the run will show (train + validation), for the up-front
            message when the cache would not fit; None when unknown.
    """

    def __init__(self, network: nn.Module, options: PrefixCacheOptions, expected_samples: int | None = None):
        self.network, self.options, self.expected_samples = network, options, expected_samples
        self.cached: list[str] = []  # names of the modules whose outputs are replayed
        #: Skipped modules (not run, their outputs unread after the cut) -> the structure their stand-in has.
        self.skipped: dict[str, _Structure] = {}
        self.keyed_on = "first input"
        self.stores: dict[str, list[_RowStore]] = {}
        self.hits = self.misses = 0
        self._uncached: set[bytes] = set()  # keys of samples the full cache computes every step
        self._row_shape: tuple[int, ...] | None = None
        self._ready = False
        self._mode = "pass"  # pass | record | replay
        self._keys: list[bytes] = []
        self._full_said = False
        self._originals: dict[str, Any] = {}
        self._device = torch.device("cpu")
        self._structures: dict[str, _Structure] = {}
        self._handles = [network.register_forward_pre_hook(self._before, with_kwargs=True)]
        self._handles.append(network.register_forward_hook(self._after))
        self._directory = Path(options.directory) if options.directory else None

    # -- what the report says --------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        """Whether the cache was used, where it cut, what it holds and how often it replayed."""
        seen = self.hits + self.misses
        return {
            "used": bool(self.cached),
            "cached_modules": [_shown(name) for name in self.cached],
            "skipped_modules": [_shown(name) for name in self.skipped],
            "keyed_on": self.keyed_on,
            "dtype": self.options.dtype,
            "samples": self.samples,
            "bytes": sum(store.nbytes for stores in self.stores.values() for store in stores),
            "hit_rate": self.hits / seen if seen else None,
            "uncached_samples": len(self._uncached),
        }

    @property
    def samples(self) -> int:
        stores = next(iter(self.stores.values()), None)
        return len(stores[0].rows) if stores else 0

    def remove(self) -> None:
        """Detach from the network: every module runs its own forward again; the stores are dropped."""
        for handle in self._handles:
            handle.remove()
        self._restore_forwards()
        self.stores.clear()

    # -- hooks ---------------------------------------------------------------------------
    def _before(self, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._mode = "pass"
        if self._busy or not args or not isinstance(args[0], torch.Tensor) or args[0].ndim == 0:
            return
        if not self._ready:
            if not module.training:
                return  # set up in training mode, where the prefix's modes are the ones that matter
            self._set_up(args, kwargs)
        first = args[0]
        if tuple(first.shape[1:]) != self._row_shape:
            return  # another input shape than the traced one: run uncached
        self._keys = self._fingerprints(args, kwargs)
        stores = next(iter(self.stores.values()))
        missing = [key for key in self._keys if key not in stores[0].rows]
        if not missing:
            self.hits += len(self._keys)
            self._mode = "replay"
            return
        self.misses += len(set(missing))
        self._mode = "record"

    def _after(self, module: nn.Module, args: Any, output: Any) -> None:
        self._mode = "pass"

    _busy = False

    def _replacement(self, name: str, original: Any, *args: Any, **kwargs: Any) -> Any:
        if self._mode == "pass":
            return original(*args, **kwargs)
        if self._mode == "record":
            output = original(*args, **kwargs)
            if name in self.stores:
                self._record(name, output)
            return output
        device = self._device
        if name in self.stores:
            structure = self._structures[name]
            parts = [
                store.get(self._keys).to(device, dtype)
                for store, (_, dtype) in zip(self.stores[name], structure.parts)
            ]
            return _assemble(structure, parts)
        return _filled(self.skipped[name], len(self._keys), device, None)

    def _record(self, name: str, output: Any) -> None:
        stores = self.stores[name]
        parts = _parts(output)
        if stores[0].full() and any(key not in stores[0].rows for key in self._keys):
            self._say_full()
        for row, key in enumerate(self._keys):
            if key in stores[0].rows:
                continue
            if any(store.full() for store in stores):
                self._uncached.add(key)
                continue
            for store, part in zip(stores, parts):
                store.put(key, part[row])

    # -- set-up: find the cut ----------------------------------------------------------------
    def _set_up(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        self._busy = True
        # The set-up's forwards run in training mode: keep the running statistics of trained BatchNorms as they were.
        buffers = [(b, b.detach().clone()) for b in self.network.buffers()]
        try:
            calls, output = self._trace(args, kwargs)
            self._choose(self._prefix(calls), args, kwargs, output)
        finally:
            self._busy = False
            with torch.no_grad():
                for buffer, value in buffers:
                    buffer.copy_(value)
        self._ready = True
        self._row_shape = tuple(args[0].shape[1:])
        log.info(
            "Frozen-prefix cache: replaying %s (keyed on the %s), skipping %d module(s) before it.",
            ", ".join(self.cached),
            self.keyed_on,
            len(self.skipped),
        )

    def _trace(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[list[_Call], Any]:
        calls: list[_Call] = []
        open_calls: dict[int, list[_Call]] = {}
        clock = iter(range(1 << 62))
        handles = []

        def before(name: str, module: nn.Module, _args: Any) -> None:
            call = _Call(name, module, next(clock))
            calls.append(call)
            open_calls.setdefault(id(module), []).append(call)

        def after(module: nn.Module, _args: Any, output: Any) -> None:
            call = open_calls[id(module)].pop()
            call.end, call.output = next(clock), output

        for name, module in self.network.named_modules():
            if module is self.network:
                continue
            handles.append(module.register_forward_pre_hook(functools.partial(before, name)))
            handles.append(module.register_forward_hook(after))
        try:
            output = self._forward_output(args, kwargs)
        finally:
            for handle in handles:
                handle.remove()
        return calls, output

    def _prefix(self, calls: list[_Call]) -> list[_Call]:
        branches = [call for call in calls if isinstance(call.module, FrozenBranch)]
        calls = [
            call for call in calls if not any(b.start < call.start and call.end < b.end for b in branches)
        ]
        trainable = [call.start for call in calls if _trained(call.module)]
        if not trainable:
            raise PrefixCacheError(
                "`cache_frozen_prefix`: no module with a trainable parameter ran in the network's forward, so there "
                "is nothing after a frozen prefix to train. Turn the cache off for this run."
            )
        first = min(trainable)
        inside = [call for call in calls if call.end < first and call.end >= 0]
        top = [call for call in inside if not any(o.start < call.start and call.end < o.end for o in inside)]
        if not top:
            raise PrefixCacheError(
                "`cache_frozen_prefix`: the first module that runs is already trained (or adapted), so the network "
                "has no frozen prefix to cache. Turn the cache off for this run, or adapt later modules only."
            )
        counts: dict[int, int] = {}
        for call in calls:
            counts[id(call.module)] = counts.get(id(call.module), 0) + 1
        self._unusable: dict[str, str] = {}  # prefix module -> why it can be neither skipped nor replayed
        for call in top:
            random = [
                f"{_shown(call.name)}.{name}".rstrip(".")
                for name, module in call.module.named_modules()
                if module.training and isinstance(module, (_BatchNorm, _DropoutNd)) and _active(module)
            ]
            if random:
                self._unusable[call.name] = (
                    f"the frozen prefix is not deterministic: {random[:3]} run in training mode (dropout draws, "
                    "batch statistics), so a replayed output would differ from a computed one. Put the frozen "
                    "backbone in eval mode, or turn the cache off."
                )
            elif counts[id(call.module)] > 1:
                self._unusable[call.name] = (
                    f"module `{_shown(call.name)}` runs {counts[id(call.module)]} times in one forward, so its "
                    "output can't be replayed per call. Turn the cache off for this run."
                )
        return top

    def _choose(
        self, prefix: list[_Call], args: tuple[Any, ...], kwargs: dict[str, Any], reference: Any
    ) -> None:
        """Try cuts from the last prefix module backwards; at each, grow the replayed set backwards until a replay
        reproduces the output. The latest cut keyed on the first input alone wins (prompts then run each step);
        failing that, the latest cut."""
        batch = args[0].shape[0]
        expected = _tensors(reference)
        found: tuple[list[_Call], list[_Call]] | None = None
        tries = 0
        for cut_index in range(len(prefix) - 1, -1, -1):
            if (
                _structure(prefix[cut_index].output, batch) is None
                or prefix[cut_index].name in self._unusable
            ):
                continue
            before = prefix[:cut_index]
            cached: list[_Call] = [prefix[cut_index]]
            for extra in [None, *reversed(before)]:
                if extra is not None:
                    if _structure(extra.output, batch) is None or extra.name in self._unusable:
                        break
                    cached.insert(0, extra)
                skipped = [call for call in before if call not in cached]
                if any(_structure(c.output, batch) is None or c.name in self._unusable for c in skipped):
                    continue
                tries += 1
                if self._replays_exactly(cached, skipped, args, kwargs, expected):
                    cached, skipped = self._pruned(cached, skipped, args, kwargs, expected)
                    self._check_untouched_by_training(cached, args, kwargs)
                    if not self._depends_on_other_inputs(cached, args, kwargs):
                        self._install(cached, skipped, args, batch, keyed_on="first input")
                        return
                    found = found or (list(cached), skipped)
                    break
                if tries >= _MAX_TRIES:
                    break
            if tries >= _MAX_TRIES:
                break
        if found is not None:
            self._install(*found, args, batch, keyed_on="all tensor inputs")
            return
        if self._unusable:
            raise PrefixCacheError(f"`cache_frozen_prefix`: {next(iter(self._unusable.values()))}")
        raise PrefixCacheError(
            "`cache_frozen_prefix`: no set of frozen modules before the first trained one reproduces the network's "
            f"output when replayed (frozen modules tried: {[c.name for c in prefix][-6:]}): the forward reads values "
            "of the prefix that no module returns. Turn the cache off for this run."
        )

    def _pruned(
        self, cached: list[_Call], skipped: list[_Call], args: Any, kwargs: Any, expected: list[torch.Tensor]
    ) -> tuple[list[_Call], list[_Call]]:
        """Drop the replayed modules (besides the cut) whose outputs nothing after the cut reads."""
        for extra in list(cached[:-1]):
            fewer = [call for call in cached if call is not extra]
            more_skipped = sorted([*skipped, extra], key=lambda call: call.start)
            if self._replays_exactly(fewer, more_skipped, args, kwargs, expected):
                cached, skipped = fewer, more_skipped
        return cached, skipped

    def _forward_output(self, args: tuple[Any, ...], kwargs: dict[str, Any], seed: int = 0) -> Any:
        with _same_randomness(seed), torch.no_grad():
            return self.network(*args, **kwargs)

    def _replays_exactly(
        self, cached: list[_Call], skipped: list[_Call], args: Any, kwargs: Any, reference: list[torch.Tensor]
    ) -> bool:
        outputs = {call.name: call.output for call in cached}
        structures = {call.name: _structure(call.output, args[0].shape[0]) for call in skipped}

        def replay(name: str, original: Any, *a: Any, **k: Any) -> Any:
            if name in outputs:
                return outputs[name]
            return _filled(structures[name], args[0].shape[0], args[0].device, math.nan)

        with _swapped({call.name: call.module for call in cached + skipped}, replay):
            try:
                replayed = _tensors(self._forward_output(args, kwargs))
            except Exception:  # a NaN placeholder broke the forward: this cut needs more replayed modules
                return False
        return len(replayed) == len(reference) and all(map(_same, replayed, reference))

    def _cached_outputs(
        self, cached: list[_Call], args: Any, kwargs: Any, seed: int, tolerate_errors: bool = False
    ) -> dict[str, Any]:
        seen: dict[str, Any] = {}

        def keep(name: str, module: nn.Module, _args: Any, output: Any) -> None:
            seen[name] = output

        handles = [call.module.register_forward_hook(functools.partial(keep, call.name)) for call in cached]
        try:
            self._forward_output(args, kwargs, seed)
        except Exception:
            if not tolerate_errors:
                raise
        finally:
            for handle in handles:
                handle.remove()
        return seen

    def _check_untouched_by_training(self, cached: list[_Call], args: Any, kwargs: Any) -> None:
        """Refuse a replayed output that changes when every trained parameter is perturbed: it reads one outside the
        module structure the trace sees (a ``FrozenBranch`` run with the adapters on, a hook's side state)."""
        trained = [p for p in self.network.parameters() if p.requires_grad]
        saved = [p.detach().clone() for p in trained]
        generator = torch.Generator().manual_seed(0)
        try:
            with torch.no_grad():
                for p in trained:
                    noise = torch.randn(p.shape, generator=generator).to(p.device, p.dtype)
                    p.add_(noise * (0.1 + p.detach().abs().mean()))
            # Perturbed weights may break the forward after the cut; the replayed outputs are seen before that.
            seen = self._cached_outputs(cached, args, kwargs, seed=0, tolerate_errors=True)
        finally:
            with torch.no_grad():
                for p, value in zip(trained, saved):
                    p.copy_(value)
        changed = [
            call.name
            for call in cached
            if call.name not in seen
            or not all(torch.equal(a, b) for a, b in zip(_tensors(seen[call.name]), _tensors(call.output)))
        ]
        if changed:
            raise PrefixCacheError(
                f"`cache_frozen_prefix`: the output of {[_shown(n) for n in changed]} changes when the trained "
                "parameters do, though no trained module runs before it: it reads trained weights through a hook or "
                "side state (a FrozenBranch run with the adapters on?). Turn the cache off for this run."
            )

    def _depends_on_other_inputs(self, cached: list[_Call], args: Any, kwargs: Any) -> bool:
        """Whether a replayed output changes when the rows of every input but the first are permuted (and the
        random seed changed); a change under the seed alone is refused: the prefix is not deterministic."""
        batch = args[0].shape[0]
        others = [value for value in [*args[1:], *kwargs.values()] if _batch_first(value, batch)]

        def unchanged(seen: dict[str, Any]) -> bool:
            return all(
                call.name in seen
                and all(torch.equal(a, b) for a, b in zip(_tensors(seen[call.name]), _tensors(call.output)))
                for call in cached
            )

        rolled_args = (args[0], *(_rolled(a, batch) for a in args[1:]))
        rolled_kwargs = {key: _rolled(value, batch) for key, value in kwargs.items()}
        if unchanged(self._cached_outputs(cached, rolled_args, rolled_kwargs, seed=1)):
            return bool(others) and batch < 2  # one row can't show a dependence: key on everything
        if not unchanged(self._cached_outputs(cached, args, kwargs, seed=1)):
            raise PrefixCacheError(
                f"`cache_frozen_prefix`: the output of {[c.name for c in cached]} changes from one forward to the "
                "next on the same input (random draws in the frozen prefix), so it can't be replayed. Put the frozen "
                "backbone in eval mode, or turn the cache off."
            )
        return True

    def _install(
        self, cached: list[_Call], skipped: list[_Call], args: Any, batch: int, keyed_on: str
    ) -> None:
        self.keyed_on = keyed_on
        dtype = _DTYPES[self.options.dtype]
        max_bytes = self.options.max_gb * 1024**3
        if self._directory is not None:
            self._directory.mkdir(parents=True, exist_ok=True)
        for call in cached:
            parts = _parts(call.output)
            self._structures[call.name] = _structure(call.output, batch)
            share = max_bytes / len(cached) / len(parts)
            self.stores[call.name] = [
                _RowStore(
                    tuple(part.shape[1:]),
                    dtype if part.is_floating_point() else part.dtype,
                    self._directory,
                    share,
                )
                for part in parts
            ]
        self.cached = [call.name for call in cached]
        self.skipped = {call.name: _structure(call.output, batch) for call in skipped}
        self._device = args[0].device
        row_bytes = sum(store.row_bytes for stores in self.stores.values() for store in stores)
        if self.expected_samples and self.expected_samples * row_bytes > max_bytes:
            fits = int(max_bytes // row_bytes)
            log.warning(
                "Frozen-prefix cache: %d samples of %.2f MB each need %.1f GB, above its ceiling of %.1f GB: the first "
                "%d are cached and the rest computed every step. " + _CEILING_FIXES,
                self.expected_samples, row_bytes / 1e6, self.expected_samples * row_bytes / 1024**3,
                self.options.max_gb, fits,
            )  # fmt: skip
            self._full_said = True
        modules = {call.name: call.module for call in cached + skipped}
        for name, module in modules.items():
            self._originals[name] = _replace_forward(
                module, functools.partial(self._replacement, name, module.forward)
            )

    def _say_full(self) -> None:
        if self._full_said:
            return
        self._full_said = True
        log.warning(
            "Frozen-prefix cache: full at its ceiling of %.1f GB (%d samples); further samples are computed every step. "
            + _CEILING_FIXES,
            self.options.max_gb,
            self.samples,
        )

    def _fingerprints(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[bytes]:
        batch = args[0].shape[0]
        inputs = [args[0]]
        if self.keyed_on != "first input":
            inputs += [value for value in [*args[1:], *kwargs.values()] if _batch_first(value, batch)]
        rows = [value.detach().reshape(batch, -1).cpu().contiguous() for value in inputs]
        keys = []
        for row in range(batch):
            digest = hashlib.blake2b(digest_size=16)
            for value in rows:
                digest.update(str((value.dtype, value.shape[1])).encode())
                digest.update(value[row].view(torch.uint8).numpy().tobytes())
            keys.append(digest.digest())
        return keys

    def _restore_forwards(self) -> None:
        modules = dict(self.network.named_modules())
        for name, forward in self._originals.items():
            _restore_forward(modules[name], forward)
        self._originals.clear()


# -- helpers ------------------------------------------------------------------------------------
def _shown(name: str) -> str:
    """A module's name in the user's network (without peft's wrapper prefix)."""
    return name.removeprefix("base_model.model.")


def _trained(module: nn.Module) -> bool:
    """A module that trains: it holds a trainable parameter itself, or it is an adapted layer (a peft tuner layer
    with a trainable adapter, whose frozen base weight runs inside it)."""
    if any(p.requires_grad for p in module.parameters(recurse=False)):
        return True
    return isinstance(module, BaseTunerLayer) and any(p.requires_grad for p in module.parameters())


def _active(module: nn.Module) -> bool:
    return not isinstance(module, _DropoutNd) or module.p > 0


def _batch_first(value: Any, batch: int) -> bool:
    return isinstance(value, torch.Tensor) and value.ndim > 0 and value.shape[0] == batch


@dataclasses.dataclass(frozen=True)
class _Structure:
    """What a module returns, per row: a tensor, a tuple of them, or a mapping of them (a transformers
    ``ModelOutput``), with their shapes and dtypes."""

    kind: type
    parts: tuple[tuple[tuple[int, ...], torch.dtype], ...]
    keys: tuple[str, ...] = ()


def _parts(output: Any) -> list[Any]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, Mapping):
        return list(output.values())
    return list(output) if isinstance(output, (list, tuple)) else []


def _structure(output: Any, batch: int) -> _Structure | None:
    """The per-row structure of a batch-first tensor, or a tuple/list/mapping of them; None for anything else
    (then the module can be neither replayed nor skipped)."""
    parts = _parts(output)
    if not parts or not all(_batch_first(p, batch) for p in parts):
        return None
    keys = tuple(output) if isinstance(output, Mapping) else ()
    kind = torch.Tensor if isinstance(output, torch.Tensor) else type(output)
    return _Structure(kind, tuple((tuple(p.shape[1:]), p.dtype) for p in parts), keys)


def _assemble(structure: _Structure, parts: list[torch.Tensor]) -> Any:
    if structure.kind is torch.Tensor:
        return parts[0]
    if structure.keys:
        return structure.kind(**dict(zip(structure.keys, parts)))
    return structure.kind(parts)


def _filled(structure: _Structure, batch: int, device: torch.device, value: float | None) -> Any:
    """A stand-in for a skipped module's output: uninitialised, or filled with ``value`` (NaN when checking)."""
    parts = []
    for shape, dtype in structure.parts:
        empty = torch.empty((batch, *shape), dtype=dtype, device=device)
        parts.append(empty.fill_(value) if value is not None and dtype.is_floating_point else empty)
    return _assemble(structure, parts)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if not a.is_floating_point():
        return torch.equal(a, b)
    return torch.equal(a.isfinite(), b.isfinite()) and torch.allclose(
        a, b, rtol=1e-4, atol=1e-5, equal_nan=True
    )


@contextmanager
def _swapped(modules: dict[str, nn.Module], replay: Any) -> Iterator[None]:
    """Each module's forward replaced by ``replay(name, original_forward, *args, **kwargs)`` for the block."""
    originals = {
        name: _replace_forward(module, functools.partial(replay, name, module.forward))
        for name, module in modules.items()
    }
    try:
        yield
    finally:
        for name, module in modules.items():
            _restore_forward(module, originals[name])


def _replace_forward(module: nn.Module, forward: Any) -> Any:
    """Set ``module.forward`` for this instance; returns what to restore (its own instance forward, if it had one)."""
    original = vars(module).get("forward")
    module.forward = forward
    return original


def _restore_forward(module: nn.Module, original: Any) -> None:
    if original is None:
        del module.forward  # the class's forward again
    else:
        module.forward = original


def _tensors(output: Any) -> list[torch.Tensor]:
    """Every tensor in a model output (tensor, tuple, list, dict or a transformers ``ModelOutput``), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return [t for value in output.values() for t in _tensors(value)]
    if isinstance(output, (list, tuple)):
        return [t for value in output for t in _tensors(value)]
    return []


def _rolled(value: Any, batch: int) -> Any:
    return torch.roll(value, 1, dims=0) if _batch_first(value, batch) else value


@contextmanager
def _same_randomness(seed: int = 0) -> Iterator[None]:
    """Forwards of the set-up with the same ``seed`` draw the same random numbers (adapter dropout); the run's own
    random stream is left where it was."""
    devices = (
        [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield
