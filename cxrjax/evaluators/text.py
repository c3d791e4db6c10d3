"""The caption metrics (metrics/captioning.py: BLEU-1..4 as pycocoevalcap, sacreBLEU, METEOR, ROUGE-L, CIDEr) of
the generated reports, both sides normalised by one scoring protocol (metrics/protocols.py). A report
generator's run scores them by default, under its dataset's protocol (tasks/captioning.py)."""

from collections.abc import Mapping
from typing import Any

from cxrjax.core.errors import ConfigError
from cxrjax.evaluators import base
from cxrjax.metrics import captioning, protocols


@base.register("text")
class Text(base.Evaluator):
  """Caption metrics under `protocol`; METEOR (Java, slow) where `meteor`. Keys "BLEU-1" ... "CIDEr",
  "num_studies", "protocol", "implementations"."""

  FIELDS = {"protocol": base.REQUIRED, "meteor": True}
  # The scores a one-line summary shows (the IU X-ray tables' columns); the evaluator returns more.
  HEADLINE = ("BLEU-1", "BLEU-2", "BLEU-3", "BLEU-4", "METEOR", "ROUGE-L", "CIDEr")

  def __init__(self, config: Mapping[str, Any], mesh: Any = None, where: str = "text"):
    super().__init__(config, mesh, where)  # Pure Python and host packages: nothing to shard.
    if self.config["protocol"] not in protocols.PROTOCOLS:
      raise ConfigError(
        f"{where}.protocol: unknown protocol {self.config['protocol']!r}; expected one of {sorted(protocols.PROTOCOLS)}"
      )

  def __call__(self, predictions: base.Predictions, progress: base.Progress | None = None) -> dict[str, Any]:
    scores = captioning.caption_metrics(
      list(predictions.references),
      list(predictions.generated),
      protocol=self.config["protocol"],
      meteor=self.config["meteor"],
    )
    scores["num_studies"] = len(predictions.ids)
    if progress is not None:
      progress(2 * len(predictions.ids))
    return scores

  def provenance(self) -> dict[str, Any]:
    return {"protocol": self.config["protocol"], "meteor": self.config["meteor"]}
