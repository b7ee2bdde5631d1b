"""Quiet runs: the few messages a normal run would print that say nothing to act on, silenced by their text.

What a run still prints: the progress bar, the model summary, Lightning's set-up lines (seed, devices, the
checkpoint tested), every other warning, and the paths it wrote. What it does not:

- Lightning's "💡 Tip:" lines (litlogger, litmodels): an advertisement on every Trainer, with no flag to turn
  it off; dropped by a filter on Lightning's rank-zero logger (other messages of that logger pass).
- "Found N module(s) in eval mode at the start of training": the modules a task's run has in eval mode are
  frozen pretrained ones left there on purpose (their dropout off, their BatchNorm statistics kept; the
  docs' "Why the frozen backbone stays in eval mode"), the case Lightning's own text says to ignore.
- torch's FutureWarning "`isinstance(treespec, LeafSpec)` is deprecated": raised inside Lightning 2.6's
  ``CombinedLoader`` on the torch releases this project supports; no argument of a run avoids it.
- peft's "Unsupported layer type '<class '...LayerNorm'>' encountered, proceed at your own risk.": peft's
  LayerNorm tuning (``ln_tuning``) asks each normalisation layer it wraps for a linear layer's in/out
  features, which a norm has not, and stores them without ever reading them (peft 0.21). Only for
  normalisation layers: the same warning about any other layer type still shows.
- Lightning's "The dirpath has changed from ..." when ``verticals validate/test/predict`` loads another run's
  checkpoint: evaluation writes no checkpoint, so what the callback did not reload is never read. Silenced
  around those calls only (:func:`without_checkpoint_dirpath_notice`); a resumed ``fit`` still shows it.

A domain silences a library's own notices the same way, by their text, where it knows them harmless
(:func:`silence_log_messages`, called from the domain's own code).

``verticals`` calls :func:`quiet_lightning` at start; a notebook calls it once after its imports (a logger
level set before ``import lightning`` is undone by that import, which sets its loggers to INFO).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

#: The start of Lightning's advertising lines ("💡 Tip: For seamless cloud ...").
LIGHTNING_TIP = "💡 Tip:"
#: The loggers Lightning's ``rank_zero_info`` writes to (``lightning`` and the ``pytorch_lightning`` package).
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "pytorch_lightning.utilities.rank_zero")
#: The loggers whose level :func:`quiet_lightning` sets when given one (each has its own handler).
LIGHTNING_LOGGERS = ("lightning.pytorch", "lightning.fabric", "pytorch_lightning", "lightning_fabric")
#: ``(message regex, category)`` of each warning silenced, matched from the message's start; the module
#: docstring says why each is harmless.
SILENCED_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    (r"Found \d+ module\(s\) in eval mode at the start of training", UserWarning),
    (r"`isinstance\(treespec, LeafSpec\)` is deprecated", FutureWarning),
    (
        r"Unsupported layer type '<class '[\w.]*(LayerNorm|RMSNorm|GroupNorm|BatchNorm\w*)'>' encountered",
        UserWarning,
    ),
)
#: Lightning's notice on loading a checkpoint written under another run directory (module docstring).
CHECKPOINT_DIRPATH_NOTICE = r"The dirpath has changed from "


class DropLightningTips(logging.Filter):
    """Drops the records of a logger whose message starts with Lightning's "💡 Tip:"."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LIGHTNING_TIP)


class DropLogMessages(logging.Filter):
    """Drops the records of a logger whose message starts with one of ``prefixes``.

    Args:
        prefixes: the starts of the messages to drop (their text before any formatting).
    """

    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def silence_log_messages(logger_name: str, prefixes: tuple[str, ...]) -> None:
    """Drop the messages of ``logger_name`` that start with one of ``prefixes``; idempotent. For a library's
    notice that a caller cannot avoid and that is harmless where it is silenced (say why beside the call).

    Args:
        logger_name: the emitting logger (a module's ``__name__``, e.g. ``transformers.generation.utils``).
        prefixes: the starts of the messages to drop.
    """
    logger = logging.getLogger(logger_name)
    if not any(isinstance(f, DropLogMessages) and f.prefixes == prefixes for f in logger.filters):
        logger.addFilter(DropLogMessages(prefixes))


def quiet_lightning(level: int | None = None) -> None:
    """Silence Lightning's tips and the warnings listed in ``SILENCED_WARNINGS``; idempotent.

    Args:
        level: Also set Lightning's loggers to this level (``logging.ERROR`` hides its INFO set-up lines too,
            as a notebook may want); None leaves their levels. Imports Lightning first, so that its import,
            which sets those loggers to INFO, comes before this.
    """
    import lightning.pytorch  # noqa: F401  (its import sets its loggers' levels and handlers)

    for name in RANK_ZERO_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, DropLightningTips) for existing in logger.filters):
            logger.addFilter(DropLightningTips())
    for message, category in SILENCED_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
    if level is not None:
        for name in LIGHTNING_LOGGERS:
            logging.getLogger(name).setLevel(level)


@contextmanager
def without_checkpoint_dirpath_notice() -> Iterator[None]:
    """Silence :data:`CHECKPOINT_DIRPATH_NOTICE` for one validate, test or predict call."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=CHECKPOINT_DIRPATH_NOTICE, category=UserWarning)
        yield
