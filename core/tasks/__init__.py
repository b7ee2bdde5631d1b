"""Lightning tasks, one per problem type."""

from verticals.core.tasks.base import AdapterTask
from verticals.core.tasks.classification import ClassificationTask
from verticals.core.tasks.forecasting import ForecastingTask

__all__ = ["AdapterTask", "ClassificationTask", "ForecastingTask"]
