"""What scores without reading the images, and what reading them perfectly would score, under the dataset's
scoring protocol as the model is (metrics/baselines.py, metrics/protocols.py): `cxrjax evaluate` puts both in
metrics.json's "baselines" beside the model's scores."""

from typing import Any

from cxrjax.data import datasets
from cxrjax.evaluators import base
from cxrjax.metrics import baselines, captioning, protocols
from cxrjax.text import cleaning as text_cleaning


@base.register("baselines")
class ImageFreeBaselines(base.Evaluator):
  """The most common training report, and the best constant report chosen on the training reports alone
  (the run's data config's training split), each as every study's prediction: {"most_common_report",
  "best_constant_report"}, each {"report", its training statistic, "scores"}; meteor."""

  FIELDS = {"meteor": True}
  SECTION = "baselines"
  STAGES = ("evaluate",)

  def __call__(self, predictions: base.Predictions, progress: base.Progress | None = None) -> dict[str, Any]:
    data = predictions.data
    train_source, _ = datasets.make_source(data, "train")
    protocol = protocols.protocol_for(data)
    train_reports = datasets.report_texts(train_source, data.cleaning)
    references = list(predictions.references)
    most_common, share = baselines.most_common_report(train_reports, protocol=protocol)
    best_constant, train_bleu4 = baselines.best_constant_report(train_reports, protocol=protocol)
    result = {}
    for name, report, extra in (
      ("most_common_report", most_common, {"share_of_training_reports": share}),
      ("best_constant_report", best_constant, {"training_BLEU-4": train_bleu4}),
    ):
      scores = captioning.caption_metrics(
        references, [report] * len(references), protocol=protocol, meteor=self.config["meteor"]
      )
      result[name] = {"report": report, **extra, "scores": scores}
    return result


@base.register("findings_oracle")
class FindingsOracle(base.Evaluator):
  """The report written from each study's true findings (the phantom sets' sources have them:
  `oracle_reports()`), scored as the model is: {"findings_oracle": {"scores"}}; nothing for a dataset whose
  findings are not known; meteor."""

  FIELDS = {"meteor": True}
  SECTION = "baselines"
  STAGES = ("evaluate",)

  def __call__(self, predictions: base.Predictions, progress: base.Progress | None = None) -> dict[str, Any]:
    oracle_reports = getattr(predictions.source, "oracle_reports", None)  # A capability of the phantom sources.
    if oracle_reports is None:
      return {}
    data = predictions.data
    oracle = [text_cleaning.clean_report(r, data.cleaning) for r in oracle_reports()]
    scores = captioning.caption_metrics(
      list(predictions.references), oracle, protocol=protocols.protocol_for(data), meteor=self.config["meteor"]
    )
    return {"findings_oracle": {"scores": scores}}
