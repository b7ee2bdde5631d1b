"""The baseline a speech practitioner tries first, beside every Whisper run's adapter: the frozen model.

Before adapting Whisper to a new kind of speech (children, accents, noise), the question is how far the model
as it ships already goes: the **frozen model's error rate**, zero-shot, on the same test utterances, decoded
the same way (greedy, capped at the run's ``max_new_tokens``) and scored by the run's text metric (WER after
Whisper's English normalisation in the packaged configs), as ``python -m verticals.domains.speech.evaluate``
reports it per condition. A config that trains nothing (``whisper_zero_shot``) is this baseline.

Registered at import (``verticals.domains.speech`` imports this module).
"""

from __future__ import annotations

from verticals.core.baseline import BaselineContext, nothing_trained, register_baseline
from verticals.core.tasks.seq2seq import Seq2SeqTask

__all__ = ["frozen_model_predictions"]


def frozen_model_predictions(context: BaselineContext) -> list[str]:
    """The model rebuilt without adapter, greedy transcripts of the test utterances.

    Args:
        context: the run's baseline context.
    """
    with context.frozen_network() as network:
        return context.network_predictions(network)


register_baseline(
    name="frozen model",
    description=(
        "the pretrained Whisper without adapter (zero-shot), greedy decoding capped at the run's "
        "max_new_tokens, scored by the run's text metric"
    ),
    applies=lambda task, datamodule: (
        isinstance(task, Seq2SeqTask) and task.hparams.get("model") == "speech.whisper"
    ),
    predict=frozen_model_predictions,
    is_config=nothing_trained,
)
