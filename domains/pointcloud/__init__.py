"""3-D point clouds: Point-PEFT (point-prior prompts and a geometry-aware adapter) and a newer point adapter on
a Point-MAE-style encoder, shape classification and part segmentation, generated shapes with a clean and a
scanned domain, and the ModelNet40, ScanObjectNN and ShapeNetPart layouts."""

from verticals.domains.pointcloud import adapters as _adapters  # noqa: F401  (registers point_peft, dapt)
from verticals.domains.pointcloud import baseline as _baseline  # noqa: F401  (registers its baseline)
from verticals.domains.pointcloud import models as _models  # noqa: F401  (registers the model and family)
