"""Lightning tasks, one per problem type."""

from verticals.core.tasks.base import AdapterTask
from verticals.core.tasks.classification import ClassificationTask
from verticals.core.tasks.fair_classification import FairClassificationTask
from verticals.core.tasks.forecasting import ForecastingTask
from verticals.core.tasks.segmentation import SegmentationTask
from verticals.core.tasks.seq2seq import Seq2SeqTask

__all__ = [
    "AdapterTask",
    "ClassificationTask",
    "FairClassificationTask",
    "ForecastingTask",
    "SegmentationTask",
    "Seq2SeqTask",
]
