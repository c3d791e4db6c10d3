"""Clinical efficacy (metrics/clinical.py): the references and the generated reports labelled by a CheXbert
labeler directory (weights/chexbert_labeler.py; `cxrjax port-weights --format chexbert`) in jitted batches
sharded over the mesh's 'data' axis, then precision, recall and F1 of the label matrices."""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cxrjax.evaluators import base
from cxrjax.metrics import clinical
from cxrjax.models import chexbert
from cxrjax.weights import chexbert_labeler


@base.register("chexbert")
class CheXbert(base.Evaluator):
  """Clinical efficacy from the CheXbert labels of the references and of the generated reports: labeler,
  batch_size. Keys "CE/<policy>/<set>/...". Provenance: the labeler directory, the checkpoint it was ported
  from and that checkpoint's SHA-256."""

  FIELDS = {"labeler": base.REQUIRED, "batch_size": 64}
  # f1chexbert's four F1s (uncertain as positive) and R2Gen's micro CE (uncertain as negative): clinical.py.
  HEADLINE = tuple(f"CE/uncertain_positive/{s}/{a}/F1" for s in ("all14", "top5") for a in ("micro", "macro")) + tuple(
    f"CE/uncertain_negative/all14/micro/{m}" for m in ("precision", "recall", "F1")
  )

  def __init__(self, config: Mapping[str, Any], mesh: Any = None, where: str = "chexbert"):
    super().__init__(config, mesh, where)
    base.positive_int(self.config["batch_size"], f"{where}.batch_size")
    self.labeler = chexbert_labeler.Labeler.load(self.config["labeler"], mesh=mesh)

  def labels(self, reports: Sequence[str], progress: base.Progress | None = None) -> np.ndarray:
    """reports -> float [N, 14] of 1 / 0 / -1 / NaN (label.py's CSV values, clinical.py's input)."""
    classes = self.labeler.classes(list(reports), self.config["batch_size"], progress)  # [N, 14]
    values = np.array([np.nan if value is None else value for value in chexbert.CLASS_VALUES])
    return values[classes]

  def __call__(self, predictions: base.Predictions, progress: base.Progress | None = None) -> dict[str, Any]:
    references = list(predictions.references)
    # One pass over both sides: batches of similar lengths, fewer padded rows.
    labels = self.labels(references + list(predictions.generated), progress)
    return clinical.clinical_efficacy(labels[len(references) :], labels[: len(references)])

  def provenance(self) -> dict[str, Any]:
    return {
      "labeler": str(self.config["labeler"]),
      "checkpoint": self.labeler.source.get("file"),
      "sha256": self.labeler.source.get("sha256"),
      "batch_size": self.config["batch_size"],
    }
