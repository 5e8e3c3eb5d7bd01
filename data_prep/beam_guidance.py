"""Guidance shards as an Apache Beam pipeline (``kws-create-guidance --runner=beam``).

``guidance.create_guidance`` checks the run, writes plan.json and lists the
guidance shards not yet written (the data shards whose mirror is missing) as
for the local runner; the pipeline then runs the local runner's per-shard work,
``guidance_shards.GuidanceWriter.write``, once per listed shard:

  Create(the data shards' paths) -> Reshuffle -> ParDo(WriteGuidanceShard)
      the failed shards' reasons -> ToList -> <scratch>/failed.json

and the launching process writes metadata.json. Each element is one shard, so
the work is parallel over shards and a shard's bytes are the local runner's
(its batches depend only on the shard). ``WriteGuidanceShard`` loads the
teacher once per DoFn instance (``setup``), writes each shard under a
temporary name and renames it (``records.ShardWriter``), and skips a shard
whose guidance exists (written before a retry of its bundle), so a killed or
failed run is finished by the same command.

The failures come back as ``<out_dir>/beam-<random>/failed.json`` (the
folder is removed when the run ends), so every worker needs the teacher,
the data and ``out_dir`` at the same paths as the launching process.
"""
import os
import shutil
import tempfile
from typing import List

import apache_beam as beam

from data_prep import beam_options, guidance_shards, shard_worker
from kws_tf import records


class WriteGuidanceShard(beam.DoFn):
  """The path of a data shard -> nothing when its guidance shard is written (now or
  before), or the one-line reason (``shard_worker.failure_message``) it could not be
  (a damaged data shard, a full disk); the other shards go on.

  The counter ``guidance/teacher_inputs`` counts the clips (or views) run
  through the teacher.
  """

  def __init__(self, job: dict):
    self._job = job
    self._inputs = beam.metrics.Metrics.counter("guidance", "teacher_inputs")

  def setup(self):
    self._writer = guidance_shards.GuidanceWriter(self._job)

  def process(self, data_path: str):
    if os.path.exists(os.path.join(self._job["out_dir"], os.path.basename(data_path))):
      return
    try:
      self._writer.write(data_path, self._inputs.inc)
    except OSError as error:
      yield shard_worker.failure_message(error)


def write(data_paths: List[str], job: dict, options: str) -> None:
  """Writes the guidance of the data shards ``data_paths`` with a Beam pipeline.

  Args:
    data_paths: the data shards whose guidance shards are missing.
    job: the run's parameters (``guidance_shards.GuidanceWriter``).
    options: Beam pipeline options as shell words (empty: the DirectRunner).

  Raises:
    SystemExit naming ``--beam_pipeline_options`` when Beam refuses them;
    ShardError with the first (sorted) reason of the failed shards and the
    number of the others, after every other shard was written.
  """
  scratch = tempfile.mkdtemp(prefix="beam-", dir=job["out_dir"])
  try:
    failed_path = os.path.join(scratch, "failed.json")
    pipeline = beam_options.pipeline(options)
    with pipeline:
      _ = (pipeline
           | "Shards" >> beam.Create(data_paths)
           | "Distribute" >> beam.Reshuffle()
           | "Guidance" >> beam.ParDo(WriteGuidanceShard(job))
           | "Failures" >> beam.combiners.ToList()
           | "WriteFailures" >> beam.Map(beam_options.write_json, failed_path))
    beam_options.raise_failed_shards(records.read_json(failed_path))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
