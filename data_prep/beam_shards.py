"""The converter's shards as an Apache Beam pipeline (``kws-create-tfrecords --runner=beam``).

The plan (``data_prep.shard_plan``) is made by the launching process as for
the process pool; the pipeline then runs the pool's per-shard work,
``shard_worker.convert_shard``, once per planned shard:

  Create(every shard of the plan) -> Reshuffle -> ParDo(ConvertShard)
      summaries -> CombineGlobally(NormalizationFn) -> normalisation statistics
      failures  -> ToList                           -> the shards that failed

Each shard is one element, so the work is parallel over shards and a shard's
bytes are those of the pool's (its batching depends only on the shard). A
shard already finished (``shard_worker.shard_done``, also after a retry of
its bundle) is not written again: its summary is read back. ``ConvertShard``
sets its worker up once (``DoFn.setup``: ``shard_worker.init_worker``, one
TensorFlow thread, the front ends) and writes through the same temporary names
and renames, so a killed or failed run is finished by the same command.

The shards' items go to the workers as files, not inside the pipeline graph
(281,241 utterances of LibriSpeech would make the graph larger than a runner
accepts): ``<out_dir>/beam/tasks/<shard>.pickle``. The pipeline's results come
back the same way, ``<out_dir>/beam/normalization.json`` and ``failed.json``;
``<out_dir>/beam`` is removed when the run ends. Every worker therefore needs
``out_dir`` (and the corpus) at the same path as the launching process.
"""
import os
import pickle
import shutil
from typing import Dict, List, Sequence

import apache_beam as beam

from data_prep import beam_options, shard_worker
from kws_tf import records

SCRATCH_DIR = "beam"
FAILED = "failed"


def _task_path(scratch: str, name: str) -> str:
  return os.path.join(scratch, "tasks", name + ".pickle")


class ConvertShard(beam.DoFn):
  """One planned shard -> its summary (``shard_worker.convert_shard``), or its failure.

  Input: ``split``, ``index``, ``count`` and ``stats`` of a shard. Main output:
  the shard's summary, written now or read from its progress file when the
  shard was finished before. Output ``FAILED``: the one-line reason
  (``shard_worker.failure_message``) of a shard that could not be written (a
  full disk); the other shards go on.
  """

  def __init__(self, config: dict, scratch: str):
    self._config = config
    self._scratch = scratch

  def setup(self):
    shard_worker.init_worker(self._config, None, None)

  def process(self, shard: dict):
    out_dir = self._config["out_dir"]
    name = records.shard_name(shard["split"], shard["index"], shard["count"],
                              self._config["compression"])
    if shard_worker.shard_done(out_dir, name, list(self._config["feature_params"])):
      yield records.read_json(shard_worker.progress_path(out_dir, name))
      return
    with open(_task_path(self._scratch, name), "rb") as f:
      items = pickle.load(f)
    try:
      yield shard_worker.convert_shard(dict(shard, items=items))
    except (OSError, shard_worker.ShardError) as error:
      yield beam.pvalue.TaggedOutput(FAILED, shard_worker.failure_message(error))


class NormalizationFn(beam.CombineFn):
  """``shard_worker.normalization`` of the statistics shards' summaries, combined
  across workers.

  The accumulator maps ``(split, index)`` to a shard's ``moments`` and
  ``frame_count``, so accumulators merge in any order and grouping the runner
  chooses; ``extract_output`` sums the moments in plan order (split, then
  index), the order of the process pool's metadata, so the statistics are
  the same bytes whichever runner and however many workers made them.
  """

  def __init__(self, formats: Sequence[str]):
    self._formats = list(formats)

  def create_accumulator(self) -> Dict[tuple, dict]:
    return {}

  def add_input(self, accumulator: Dict[tuple, dict], summary: dict) -> Dict[tuple, dict]:
    if any(m is not None for m in summary["moments"].values()):
      accumulator[summary["split"], summary["index"]] = {
          "moments": summary["moments"], "frame_count": summary["frame_count"]}
    return accumulator

  def merge_accumulators(self, accumulators) -> Dict[tuple, dict]:
    merged = {}
    for accumulator in accumulators:
      merged.update(accumulator)
    return merged

  def extract_output(self, accumulator: Dict[tuple, dict]) -> dict:
    return shard_worker.normalization([accumulator[k] for k in sorted(accumulator)],
                                      self._formats)


def convert(shards: List[dict], tasks: List[dict], config: dict, options: str) -> dict:
  """Writes the shards of ``tasks`` with a Beam pipeline; returns the normalisation statistics.

  Args:
    shards: every shard of the plan (``split``, ``index``, ``count``, ``stats``),
      the finished ones included: their summaries count in the statistics.
    tasks: the shards not finished, each with its ``items``.
    config: the workers' config (``shard_worker.init_worker``).
    options: Beam pipeline options as shell words (empty: the DirectRunner).

  Returns:
    ``shard_worker.normalization`` of the statistics shards of ``shards``.

  Raises:
    SystemExit naming ``--beam_pipeline_options`` when Beam refuses them;
    ShardError with the first (sorted) reason of the failed shards and the
    number of the others, after every other shard was written.
  """
  out_dir = config["out_dir"]
  scratch = os.path.join(out_dir, SCRATCH_DIR)
  shutil.rmtree(scratch, ignore_errors=True)  # a killed run's; under the out_dir lock
  os.makedirs(os.path.join(scratch, "tasks"))
  try:
    for task in tasks:
      name = records.shard_name(task["split"], task["index"], task["count"],
                                config["compression"])
      records.write_bytes(_task_path(scratch, name), pickle.dumps(task["items"]))
    normalization_path = os.path.join(scratch, "normalization.json")
    failed_path = os.path.join(scratch, "failed.json")
    pipeline = beam_options.pipeline(options)
    with pipeline:
      results = (pipeline
                 | "Shards" >> beam.Create(shards)
                 | "Distribute" >> beam.Reshuffle()
                 | "Convert" >> beam.ParDo(ConvertShard(config, scratch)).with_outputs(
                     FAILED, main="summaries"))
      _ = (results.summaries
           | "Normalization" >> beam.CombineGlobally(NormalizationFn(config["feature_params"]))
           | "WriteNormalization" >> beam.Map(beam_options.write_json, normalization_path))
      _ = (results[FAILED]
           | "Failures" >> beam.combiners.ToList()
           | "WriteFailures" >> beam.Map(beam_options.write_json, failed_path))
    beam_options.raise_failed_shards(records.read_json(failed_path))
    return records.read_json(normalization_path)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
