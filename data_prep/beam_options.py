"""What the Beam runners of kws-create-tfrecords and kws-create-guidance share.

The flag ``--beam_pipeline_options`` (a binary shows it in its ``--help`` with
``flags.adopt_module_key_flags(beam_options)``), the check that apache-beam
(the ``beam`` extra) is installed, the pipeline made from the options, and
how a pipeline's results come back to the launching process: as JSON files
(``write_json``) on the file system the workers share with it, the failed
shards' reasons among them (``raise_failed_shards``). apache-beam is
imported only when a pipeline is made.
"""
import importlib.util
import shlex
from typing import List

from absl import app, flags

flags.DEFINE_string("beam_pipeline_options", "", "--runner=beam: Beam pipeline options, "
                    "passed through (shell words). Default: the DirectRunner in this "
                    "process; --direct_num_workers=4 --direct_running_mode=multi_processing "
                    "for 4 local processes; --runner=DataflowRunner --project=... "
                    "--region=... --temp_location=gs://... --sdk_container_image=... for "
                    "Dataflow (the input and output folders must then be on a file system "
                    "every worker mounts at the same path).")


def check_installed() -> None:
  """Raises app.UsageError when apache-beam is not installed (for ``--runner=beam``)."""
  if importlib.util.find_spec("apache_beam") is None:
    raise app.UsageError("--runner=beam needs apache-beam: pip install -e '.[beam]'")


def pipeline(options: str):
  """A ``beam.Pipeline`` run by ``options`` (shell words; empty: the DirectRunner).

  Raises SystemExit naming ``--beam_pipeline_options`` when Beam refuses them
  (an unknown runner).
  """
  import apache_beam as beam
  from apache_beam.options.pipeline_options import PipelineOptions
  try:
    return beam.Pipeline(options=PipelineOptions(shlex.split(options)))
  except ValueError as error:
    raise SystemExit(f"error: --beam_pipeline_options: {error}") from error


def write_json(value, path: str) -> None:
  """``records.write_json(path, value)``, the element first: ``beam.Map(write_json, path)``."""
  from kws_tf import records
  records.write_json(path, value)


def raise_failed_shards(reasons: List[str]) -> None:
  """Raises ``shard_worker.ShardError`` with the first (sorted) of the failed shards'
  one-line ``reasons`` and the number of the others; returns when there are none."""
  from data_prep import shard_worker
  failed = sorted(reasons)
  if failed:
    others = f" (and {len(failed) - 1} other shards)" if len(failed) > 1 else ""
    raise shard_worker.ShardError(failed[0] + others)
