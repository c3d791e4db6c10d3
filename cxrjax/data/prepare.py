"""`cxrjax prepare`: builds a dataset's TFDS files and its training vocabulary.

  cxrjax prepare iu_xray --manual-dir DIR --data-dir DIR [--split random|r2gen]
                         [--cleaning r2gen|drop_short_words|none] [--min-count 3]
                         [--sections findings|findings_impression] [--num-threads N]
  cxrjax prepare chestxray14 --manual-dir DIR --data-dir DIR [--split official|random|chexnet]
                             [--missing-images error|skip]
  cxrjax prepare rocov2 --manual-dir DIR --data-dir DIR [--subset all|chest_xray]
                        [--layout rocov2_csv|rocov2_parquet] [--num-threads N]
  cxrjax prepare roco --manual-dir DIR --data-dir DIR [--subset all|chest_xray] [--num-threads N]

writes DATA_DIR/iu_xray/<split>/1.0.0/ (array_record files, read by iu_xray.IUXraySource)
and, beside them, vocabulary.<cleaning>.json (iu_xray.vocabulary_path; with --sections
findings_impression, vocabulary.<cleaning>.findings_impression.json): the words of the
cleaned training reports seen at least --min-count times. Validation and test reports
never shape the vocabulary. A dataset already built is reused (--manual-dir is then not
needed); running again with another --cleaning adds that vocabulary. The defaults (cleaning r2gen,
min count 3) build the vocabulary the IU X-ray configs read.

The summary gives the studies per split, what the parser skipped and why, the vocabulary
size, and how much of the validation and test words training covers (text.vocabulary_stats).
A download too partial to fill the three splits (e.g. the reports with only some of the images)
prints what was read, kept and skipped, then one line saying what is missing, and exits with 2.
ROCOv2 and ROCO (roco.prepare) print, per split, the captions read, kept, left out by the
subset, and skipped with their reasons (missing or unreadable image, empty caption, duplicate id).
The phantom sets need no preparation: they are generated on the fly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
import dataclasses
import json
import pathlib
import sys
from typing import Any

from cxrjax.core import errors, files
from cxrjax.data import chestxray14
from cxrjax.data import iu_xray
from cxrjax.data import registry
from cxrjax.data import roco
from cxrjax.data import tfds_common
from cxrjax.text import cleaning as cleaning_lib
from cxrjax.text import tokenizers

DATASETS = ("iu_xray", "chestxray14", "rocov2", "roco")


def add_parser(commands: argparse._SubParsersAction) -> argparse.ArgumentParser:
  """Adds the `prepare` sub-command to `commands` (from ArgumentParser.add_subparsers)."""
  parser = commands.add_parser(
    "prepare",
    help="build a dataset (TFDS array_record) and its training vocabulary",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  _add_arguments(parser)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  """Runs `prepare` with the arguments after the sub-command name; returns the exit status."""
  parser = argparse.ArgumentParser(
    prog="cxrjax prepare", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  _add_arguments(parser)
  args = parser.parse_args(argv)
  return errors.guarded("prepare", lambda: args.run(args))


def _add_arguments(parser: argparse.ArgumentParser) -> None:
  datasets = parser.add_subparsers(dest="dataset", required=True, metavar="{" + ",".join(DATASETS) + "}")
  _add_iu_xray_arguments(datasets.add_parser("iu_xray", help="IU X-ray (Open-i, Kaggle or R2Gen layout)"))
  add_chestxray14_arguments(datasets.add_parser("chestxray14", help="NIH ChestX-ray14"))
  add_roco_arguments(datasets.add_parser("rocov2", help="ROCOv2 (official CSVs or Hugging Face parquet)"), "rocov2")
  add_roco_arguments(datasets.add_parser("roco", help="ROCO v1 (radiology)"), "roco")


def _add_iu_xray_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
    "--manual-dir",
    type=pathlib.Path,
    help="the downloaded source files (see iu_xray.IuXray.MANUAL_DOWNLOAD_INSTRUCTIONS); "
    "not needed when the dataset is already built",
  )
  parser.add_argument(
    "--data-dir",
    required=True,  # A string: pathlib would turn gs://b into gs:/b.
    help="TFDS data folder to write (the data config's data_dir)",
  )
  parser.add_argument(
    "--split",
    choices=iu_xray.TFDS_CONFIGS,
    default="random",
    help="random: seeded 70/10/20 study split; r2gen: R2Gen's split (the TFDS config, iu_xray/<split>)",
  )
  parser.add_argument(
    "--cleaning",
    choices=cleaning_lib.CLEANING_STYLES,
    default=registry.DEFAULT_CLEANING,
    help="report cleaning the vocabulary is built with (default: %(default)s, as the IU X-ray configs)",
  )
  parser.add_argument(
    "--min-count",
    type=_positive_int,
    default=registry.DEFAULT_MIN_COUNT,
    help="keep training words seen at least this often (R2Gen: 3)",
  )
  parser.add_argument(
    "--sections",
    choices=sorted(iu_xray.REPORT_SECTIONS),
    default="findings",
    help="the report sections the vocabulary is built from (config.data.report_sections): "
    "findings (default, R2Gen's protocol) or findings_impression (ReXrank's)",
  )
  parser.add_argument(
    "--num-threads", type=int, default=None, help="threads re-encoding images (default: CPU count, at most 8)"
  )
  parser.set_defaults(run=_run)


def _positive_int(value: str) -> int:
  number = int(value)
  if number < 1:
    raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
  return number


def _run(args: argparse.Namespace) -> int:
  """Runs `cxrjax prepare iu_xray`; bad input raises a UserError (errors.guarded prints it)."""
  tfds_common.check_local_data_dir(args.data_dir, "iu_xray")  # Before any builder touches it.
  summary = prepare_iu_xray(
    args.manual_dir,
    args.data_dir,
    config=args.split,
    cleaning=args.cleaning,
    min_count=args.min_count,
    report_sections=args.sections,
    num_threads=args.num_threads,
    progress=True,
  )
  print(format_summary(summary))
  return 0


def prepare_iu_xray(
  manual_dir: str | pathlib.Path | None,
  data_dir: str | pathlib.Path,
  *,
  config: str = "random",
  cleaning: str = registry.DEFAULT_CLEANING,
  min_count: int = registry.DEFAULT_MIN_COUNT,
  report_sections: str = "findings",
  num_threads: int | None = None,
  progress: bool = False,
) -> dict[str, Any]:
  """Builds iu_xray/<config> (unless built) and its vocabulary of the `report_sections` reports
  (iu_xray.REPORT_SECTIONS, config.data.report_sections); returns the summary.

  Returns:
    a JSON-serialisable dict: "dataset_dir", "build" (the builder's record: parse report,
    split sizes, unassigned studies, colour images), "split_sizes" (as read back),
    "vocabulary_path" and "vocabulary" (text.tokenizers.VocabularyStats as a dict).

  Raises:
    tfds_common.EmptySplitError: too few studies kept for a split (its `counts` say what was read).
  """
  if cleaning not in cleaning_lib.CLEANING_STYLES:
    raise ValueError(f"unknown cleaning {cleaning!r}; expected one of {cleaning_lib.CLEANING_STYLES}")
  dataset_dir = iu_xray.dataset_dir(data_dir, config)
  builder = iu_xray.IuXray(config=config, data_dir=data_dir, num_threads=num_threads, progress=progress)
  tfds_common.build(builder, manual_dir, progress=progress)

  cleaned = {}
  for split in iu_xray.TFDS_SPLITS:
    source = iu_xray.IUXraySource(data_dir, config, split, report_sections)
    cleaned[split] = [cleaning_lib.clean_report(source[i]["report"], cleaning) for i in range(len(source))]
  vocabulary = tokenizers.WordVocabulary.build(cleaned["train"], min_count=min_count, cleaning_style=cleaning)
  path = iu_xray.vocabulary_path(data_dir, config, cleaning, report_sections)
  with files.replaced_on_success(path) as temporary:  # A killed run leaves no half-written vocabulary.
    vocabulary.to_json(temporary)
  stats = tokenizers.vocabulary_stats(
    cleaned["train"], {split: cleaned[split] for split in ("validation", "test")}, min_count=min_count
  )
  return {
    "dataset": f"iu_xray/{config}",
    "dataset_dir": str(dataset_dir),
    "build": dict(builder.info.metadata["build"]),
    "split_sizes": {split: len(texts) for split, texts in cleaned.items()},
    "vocabulary_path": str(path),
    "cleaning": cleaning,
    "report_sections": report_sections,
    "min_count": min_count,
    "vocabulary": dataclasses.asdict(stats),
  }


def format_summary(summary: dict[str, Any]) -> str:
  """The summary of prepare_iu_xray as text, ending with the summary as one JSON line."""
  build, parse, stats = summary["build"], summary["build"]["parse_report"], summary["vocabulary"]
  sizes = summary["split_sizes"]
  lines = [
    f"{summary['dataset']} in {summary['dataset_dir']}",
    f"  source: {parse['layout']} layout, {parse['source']}",
    f"  studies: {parse['num_studies']} read, {parse['num_records']} kept, "
    f"{parse['num_studies'] - parse['num_records']} skipped",
  ]
  for reason, count in sorted(parse["skipped"].items()):
    lines.append(f"    skipped {reason}: {count} (e.g. {', '.join(parse['examples'].get(reason, []))})")
  # A study can have several issues and is counted as skipped for the first one only.
  lines.append(
    "    issues found (skipped or kept): "
    + (", ".join(f"{reason} {count}" for reason, count in sorted(parse["issues"].items())) or "none")
  )
  lines.append(f"    view sources: {parse['view_sources']}")
  if build["colour_images"]:
    lines.append(
      f"    colour images converted to gray: {build['colour_images']} "
      f"(e.g. {', '.join(build['colour_image_examples'])})"
    )
  lines.append(
    "  splits: "
    + ", ".join(f"{split} {count}" for split, count in sizes.items())
    + f"; kept but in no split: {build['unassigned']}"
  )
  not_kept = build["split_studies_not_kept"]
  if any(not_kept.values()):
    lines.append(
      "  split studies not kept (skipped or absent): "
      + ", ".join(f"{split} {count}" for split, count in not_kept.items())
    )
  lines.append(
    f"  vocabulary: {stats['vocabulary_size']} tokens (cleaning {summary['cleaning']}, "
    f"sections {summary['report_sections']}, min count {summary['min_count']}, 4 special tokens included) -> "
    f"{summary['vocabulary_path']}"
  )
  lines.append(f"  training words: {stats['train_tokens']} tokens, {stats['train_types']} distinct")
  for split, coverage in stats["splits"].items():
    lines.append(
      f"  {split}: {100 * coverage['token_coverage']:.1f}% of {coverage['num_tokens']} "
      f"word tokens and {100 * coverage['type_coverage']:.1f}% of "
      f"{coverage['num_types']} distinct words seen in training; <unk> rate "
      f"{100 * coverage['unk_rate']:.2f}%"
    )
  lines.append(json.dumps(summary, sort_keys=True))
  return "\n".join(lines)


def add_chestxray14_arguments(parser: argparse.ArgumentParser) -> None:
  """The arguments of `cxrjax prepare chestxray14` (runs run_chestxray14)."""
  parser.add_argument(
    "--manual-dir",
    default=None,
    help="folder with Data_Entry_2017*.csv(.gz), images*/ and the official lists, or the "
    "CheXNet lists in chexnet_split/ (not needed when the dataset is already built)",
  )
  parser.add_argument("--data-dir", required=True, help="TFDS data dir to write chestxray14/ into")
  parser.add_argument(
    "--split",
    choices=chestxray14.TFDS_CONFIGS,
    default="official",
    help="official lists + patient-level val carve-out, a patient-level 70/10/20, or the "
    "CheXNet reproduction lists (train_list.txt, val_list.txt, test_list.txt)",
  )
  parser.add_argument(
    "--missing-images",
    choices=chestxray14.MISSING_IMAGE_POLICIES,
    default="error",
    help="rows whose image file is absent: fail (default) or skip and count them",
  )
  parser.set_defaults(run=run_chestxray14)


def run_chestxray14(args: argparse.Namespace) -> int:
  """Runs `cxrjax prepare chestxray14`: prints the summary as one JSON line, then on stderr one warning line per
  problem the split lists had (labels that disagree with the label file, label-file images in no list); bad
  input raises a UserError."""
  tfds_common.check_local_data_dir(args.data_dir, "chestxray14")  # Before any builder touches it.
  summary = chestxray14.prepare_chestxray14(
    args.manual_dir, args.data_dir, split=args.split, missing_images=args.missing_images
  )
  print(json.dumps(summary))
  for line in chestxray14_warnings(summary):
    print(f"cxrjax prepare chestxray14: warning: {line}", file=sys.stderr)
  return 0


def chestxray14_warnings(summary: dict[str, Any]) -> list[str]:
  """One line per split-list problem in a prepare_chestxray14 summary (none for a clean build)."""
  lists, warnings = summary.get("split_lists", {}), []
  if lists.get("label_disagreements"):
    warnings.append(
      f"{lists['label_disagreements']} images of the {summary['dataset']} lists have labels that "
      f"differ from {summary['label_file']}; the label file's are stored (split_lists in the "
      f"summary), e.g. {lists['label_disagreement_examples'][0]}"
    )
  if lists.get("unlisted"):
    warnings.append(
      f"{lists['unlisted']} images of {summary['label_file']} are in no list of "
      f"{summary['dataset']} and in no split, e.g. {', '.join(lists['unlisted_examples'])}"
    )
  return warnings


def add_roco_arguments(parser: argparse.ArgumentParser, dataset: str) -> None:
  """The arguments of `cxrjax prepare rocov2` and `cxrjax prepare roco` (runs run_roco)."""
  parser.add_argument(
    "--manual-dir",
    type=pathlib.Path,
    default=None,
    help=f"the downloaded files (see roco.{roco.BUILDERS[dataset].__name__}.MANUAL_DOWNLOAD_INSTRUCTIONS); "
    "not needed when the dataset is already built",
  )
  parser.add_argument(
    "--data-dir",
    required=True,  # A string: pathlib would turn gs://b into gs:/b.
    help="TFDS data folder to write (the data config's data_dir)",
  )
  parser.add_argument(
    "--subset",
    choices=roco.SUBSETS,
    default="all",
    help="all images, or chest radiographs only (the rule of roco/chest.py; the data config's subset)",
  )
  if len(roco.DATASET_LAYOUTS[dataset]) > 1:
    parser.add_argument(
      "--layout",
      choices=roco.DATASET_LAYOUTS[dataset],
      default=None,
      help="the manual folder's layout (default: detected)",
    )
  parser.add_argument(
    "--num-threads", type=int, default=None, help="threads checking images (default: CPU count, at most 8)"
  )
  parser.set_defaults(run=run_roco, roco_dataset=dataset)


def run_roco(args: argparse.Namespace) -> int:
  """Runs `cxrjax prepare rocov2|roco`: prints the summary; bad input raises a UserError."""
  tfds_common.check_local_data_dir(args.data_dir, args.roco_dataset)  # Before any builder touches it.
  summary = roco.prepare(
    args.roco_dataset,
    args.manual_dir,
    args.data_dir,
    subset=args.subset,
    layout=getattr(args, "layout", None),
    num_threads=args.num_threads,
    progress=True,
  )
  print(roco.format_summary(summary))
  return 0


if __name__ == "__main__":
  sys.exit(main())
