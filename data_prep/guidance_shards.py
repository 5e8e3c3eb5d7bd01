"""The per-shard work of guidance: a teacher's logits or hints for one data shard.

``GuidanceWriter`` holds a teacher's guidance model and writes the guidance
shard that mirrors one data shard (record layout: ``data_prep.guidance``). Both
runners of ``data_prep.guidance.create_guidance`` use it: the local one in this
process, the Beam one in every worker (``data_prep.beam_guidance``).
"""
import os
from typing import Callable, Dict, List

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np

from kws_tf import records


def guidance_model(teacher, kind: str, up_to: int, with_features: bool):
  """A model with the teacher's inputs and the outputs to store.

  Returns ``(model, names)``: the model's outputs are a dict with
  ``frames`` and the stored names (see the module docstring).
  """
  import tf_keras as keras
  from kws_tf.models import teacher as teacher_lib, whisper
  inputs = teacher.input
  frames = whisper.output_frames(inputs["num_frames"])
  if kind == "logits":
    outputs = {"logits": teacher.output["logits"]}
    if with_features:
      if "projection" not in teacher.output:
        raise ValueError("the teacher has no feature layer (projection output); write "
                         "logits only with --nofeatures")
      outputs["features"] = teacher.output["projection"]
  else:
    try:
      encoder = teacher.get_layer("encoder")
    except ValueError:
      raise ValueError("--guidance=hints needs a Whisper teacher (a layer named 'encoder')") from None
    hidden_states = encoder.output["hidden_states"]
    if not -len(hidden_states) <= up_to < len(hidden_states):
      raise ValueError(f"--up_to={up_to}: the teacher's encoder has hidden states 0.."
                       f"{len(hidden_states) - 1} (0 = embeddings)")
    outputs = {"hint": hidden_states[up_to]}
    if teacher.output["logits"].shape.rank == 2:  # kws: also the pooled hint
      outputs["hint_pooled"] = teacher_lib.pooled_frames(
          hidden_states[up_to], inputs["features"], inputs["num_frames"], "hint_pool")
  outputs["frames"] = keras.layers.Identity(name="guidance_frames")(frames)
  return keras.Model(inputs, outputs), [k for k in outputs if k != "frames"]


def output_shapes(model, names: List[str]) -> Dict[str, list]:
  shapes = {}
  for name in names:
    dims = model.output[name].shape.as_list()[1:]
    shapes[name] = {"shape": dims}
  return shapes


def ensemble_model(teachers):
  """One teacher made of several of the same inputs and outputs: the ``logits``
  of the returned model are the log of the mean of the teachers' class
  probabilities (``[batch, classes]`` kws, ``[batch, frames, vocabulary]``
  ctc), so that its softmax is the ensemble's prediction."""
  import tensorflow as tf
  import tf_keras as keras
  inputs = teachers[0].input
  for i, teacher in enumerate(teachers):
    teacher._name = f"teacher_{i}"  # noqa: SLF001  (layer names in one model are unique)
  log_probs = [tf.nn.log_softmax(t(inputs)["logits"], axis=-1) for t in teachers]
  mean = tf.math.reduce_logsumexp(tf.stack(log_probs), axis=0) - np.log(len(teachers))
  return keras.Model(inputs, {"logits": keras.layers.Identity(name="ensemble_logits")(mean)})


def load_guidance_model(job: dict):
  """The ``guidance_model`` of the teacher of ``job`` (see ``GuidanceWriter``):
  ``(model, names)``; with ``job["ensemble"]`` (more ``(teacher_dir,
  checkpoint_path)``), of the ``ensemble_model`` of them all."""
  from kws_tf import model_dir as model_dir_lib
  teacher = model_dir_lib.load_trained_model(job["teacher_dir"], job["checkpoint_path"])
  if job["ensemble"]:
    teacher = ensemble_model([teacher] + [model_dir_lib.load_trained_model(d, c)
                                          for d, c in job["ensemble"]])
  return guidance_model(teacher, job["kind"], job["up_to"], job["features"])


class GuidanceWriter:
  """Writes the guidance shards of one run, each mirroring one data shard.

  Made once where the teacher runs: by ``create_guidance`` for the local
  runner, in ``DoFn.setup`` of every Beam worker's DoFn instance. It holds the teacher's
  guidance model, the data's record parser and, with views, the augmenter.
  ``job`` holds the run's parameters (``create_guidance`` makes it):
  ``teacher_dir``, ``checkpoint_path``, ``ensemble``, ``data_dir``, ``out_dir``,
  ``kind``, ``up_to``, ``features``, ``batch_size``, ``dtype``, ``views``,
  ``augment_config``, ``view_seed``, ``babble_split``, ``base_dir`` and
  ``first_view`` (views ``0..first_view - 1`` are copied from the guidance in
  ``base_dir``; 0 and "": every view is computed).
  """

  def __init__(self, job: dict, model=None, names: List[str] = ()):
    """``model`` and ``names``: ``load_guidance_model(job)``, loaded now when None."""
    from kws_tf import data
    from kws_tf import model_dir as model_dir_lib
    self._job = job
    self._spec, self._data_meta, self._parse = model_dir_lib.model_records(
        job["teacher_dir"], job["data_dir"])
    if model is None:
      model, names = load_guidance_model(job)
    self._model, self._names = model, list(names)
    self._augmenter = data.make_augmenter(job["data_dir"], job["augment_config"],
                                          job["babble_split"]) if job["views"] else None
    self._base = data.open_guidance(job["base_dir"], self._data_meta) if job["first_view"] \
        else None

  def write(self, data_path: str, progress: Callable[[int], None]) -> int:
    """Writes ``<out_dir>/<name of data_path>``, the guidance of the data shard at
    ``data_path`` (with views: of the raw shard of that name); returns its record count.

    ``progress`` is called with the teacher inputs (clips or views) of every batch.
    Raises OSError naming the file: the data shard when it cannot be read (a
    damaged record), the guidance shard when it cannot be written (a full disk;
    no part of it is left).
    """
    import tensorflow as tf
    job, meta = self._job, self._data_meta
    name = os.path.basename(data_path)
    out_path = os.path.join(job["out_dir"], name)
    if job["views"]:
      data_path = os.path.join(job["data_dir"], meta.formats["raw"].dir, name)
    base = BaseViews(self._base, name)
    try:
      if job["views"] and self._spec.task == "ctc":
        from kws_tf import utterance_augment
        utterances = utterance_augment.UtteranceAugmenter(
            self._augmenter, meta.splits[_split_of(meta, name)].max_frames["raw"])
        return _write_utterance_view_shard(self._model, self._spec, meta, utterances,
                                           job["views"], job["view_seed"], data_path, out_path,
                                           meta.compression, job["dtype"], job["batch_size"],
                                           progress, job["first_view"], base)
      if job["views"]:
        return _write_view_shard(self._model, self._spec, meta, self._augmenter, job["views"],
                                 job["view_seed"], data_path, out_path, meta.compression,
                                 job["dtype"], job["batch_size"], progress, job["first_view"],
                                 base, self._names)
      return _write_shard(self._model, self._parse, data_path, out_path, meta.compression,
                          meta.compression, self._names, job["dtype"], job["batch_size"],
                          progress)
    except tf.errors.OpError as error:  # reading the data shard; writes raise OSError
      raise OSError(None, records.tf_error_reason(error.message), data_path) from error


def _write_shard(model, parse, data_path: str, out_path: str, data_compression: str,
                 out_compression: str, names: List[str], dtype: str, batch_size: int,
                 progress: Callable[[int], None]) -> int:
  """Runs the teacher over one data shard and writes its guidance shard."""
  import tensorflow as tf
  from kws_tf import data
  examples = [parse(s) for s in data.records_dataset([data_path], data_compression)]
  order = np.argsort([int(e["num_frames"]) for e in examples], kind="stable")
  results: Dict[int, Dict[str, np.ndarray]] = {}
  for start in range(0, len(order), batch_size):
    chunk = order[start:start + batch_size]
    longest = max(int(examples[i]["num_frames"]) for i in chunk)
    features = np.zeros([len(chunk), longest, examples[chunk[0]]["features"].shape[-1]],
                        np.float32)
    for row, i in enumerate(chunk):
      values = examples[i]["features"].numpy()
      features[row, :len(values)] = values
    num_frames = np.array([int(examples[i]["num_frames"]) for i in chunk], np.int32)
    out = model({"features": tf.constant(features), "num_frames": tf.constant(num_frames)},
                training=False)
    out = {k: v.numpy() for k, v in out.items()}
    for row, i in enumerate(chunk):
      frames = int(out["frames"][row])
      results[int(i)] = {"frames": frames}
      for name in names:
        value = out[name][row]
        if value.ndim == 2:
          value = value[:frames]
        results[int(i)][name] = value.astype(dtype)
    progress(len(chunk))
  return _write_records(
      out_path, out_compression, dtype,
      ((example["id"].numpy(), results[i]["frames"], {n: results[i][n] for n in names})
       for i, example in enumerate(examples)))


def _write_records(out_path: str, compression: str, dtype: str, rows) -> int:
  """Writes a guidance shard atomically from ``(id bytes, frames, {name: array})`` rows
  (``frames`` an int, or a list of them for ctc views; arrays stored as
  little-endian ``dtype`` bytes); returns the record count."""
  import tensorflow as tf
  writer = records.ShardWriter(out_path, compression)
  try:
    for example_id, frames, outputs in rows:
      counts = [int(n) for n in np.atleast_1d(frames)]
      feature = {"id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[example_id])),
                 "frames": tf.train.Feature(int64_list=tf.train.Int64List(value=counts))}
      for name, value in outputs.items():
        data = np.asarray(value).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        feature[name] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[data]))
      writer.write(tf.train.Example(features=tf.train.Features(feature=feature))
                   .SerializeToString(deterministic=True))
  except BaseException:
    writer.abort()
    raise
  writer.commit()
  return writer.count


class BaseViews:
  """The views an extended guidance shard starts with: the records of shard
  ``name`` of ``guidance`` (a ``kws_tf.data.Guidance`` of views), each
  ``(frames, {output name: stored flat values})`` by id (``frames`` a list of
  ints). Empty without a ``guidance``: nothing to prepend. OSError naming the
  shard when it cannot be read."""

  def __init__(self, guidance=None, name: str = ""):
    import tensorflow as tf
    from kws_tf import data
    self.path, self._records = "", {}
    if guidance is None:
      return
    self.path = os.path.join(guidance.guidance_dir, name)
    dtype = np.dtype(guidance.metadata["dtype"]).newbyteorder("<")
    names = list(guidance.metadata["outputs"])
    try:
      for serialized in data.records_dataset([self.path], guidance.compression):
        x = tf.io.parse_single_example(serialized, guidance.spec)
        self._records[x["id"].numpy()] = (
            [int(n) for n in np.atleast_1d(x["frames"].numpy())],
            {n: np.frombuffer(x[n].numpy(), dtype) for n in names})
    except tf.errors.OpError as error:
      raise OSError(None, records.tf_error_reason(error.message), self.path) from error

  def prepend(self, example_id: bytes, frames: List[int],
              outputs: Dict[str, np.ndarray]) -> tuple:
    """``(frames, outputs)`` of one record with its stored views first (each
    output flat then, view after view); as given when there are none. OSError
    naming ``path`` when the record is not stored."""
    if not self.path:
      return frames, outputs
    if example_id not in self._records:
      raise OSError(None, f"no views of record {example_id.decode()!r} to extend", self.path)
    old_frames, old = self._records[example_id]
    return old_frames + frames, {
        name: np.concatenate([old[name], value.reshape(-1).astype(old[name].dtype)])
        for name, value in outputs.items()}


def _write_view_shard(model, spec, data_meta: records.RecordsMetadata, augmenter, views: int,
                      view_seed: int, data_path: str, out_path: str, compression: str,
                      dtype: str, batch_size: int, progress: Callable[[int], None],
                      first_view: int, base: BaseViews, names: List[str]) -> int:
  """Writes the teacher's outputs ``names`` for ``views`` views of every record
  of one raw data shard (``logits [views, classes]``, ``features [views, d]``):
  view v of a record is its augmented window with seed ``augment.view_seed(id,
  v, view_seed)``, through the teacher's front end (and the view's tempo warp,
  ``Augmenter.teacher_warp``). Views ``0..first_view - 1`` come from ``base``."""
  import tensorflow as tf
  from kws_tf import augment, data
  parse = data.raw_batch_parser(data_meta)
  front_end = data.WaveformFrontEnd(spec.feature_params, spec.normalization,
                                    augmenter.warp_factors)
  samples = data_meta.raw_clip_samples

  new = views - first_view

  def teacher_input(x):  # records [batch] -> their new views [batch * new], record-major
    view = tf.tile(tf.range(first_view, views), tf.shape(x["id"]))
    seeds = augment.view_seed(tf.repeat(x["id"], new), view, view_seed)
    choices = augmenter.draw(seeds, tf.repeat(x["shift_range"], new, axis=0), samples)
    values = front_end(augmenter.apply(tf.repeat(x["waveform"], new, axis=0), choices),
                       augmenter.teacher_warp(choices))
    return values, tf.fill(tf.shape(values)[:1], tf.shape(values)[1])

  records_ds = data.records_dataset([data_path], compression).batch(
      max(1, batch_size // new)).map(parse)
  ids = [i for x in records_ds for i in x["id"].numpy()]
  windows = records_ds.map(teacher_input)
  values = {name: [] for name in names + ["frames"]}
  for features, num_frames in windows:
    out = model({"features": features, "num_frames": num_frames}, training=False)
    for name, parts in values.items():
      parts.append(out[name].numpy())
    progress(len(features))
  if not ids:
    return _write_records(out_path, compression, dtype, ())
  outputs = {name: np.concatenate(values[name]).reshape([len(ids), new, -1]).astype(dtype)
             for name in names}
  frames = np.concatenate(values["frames"]).reshape([len(ids), new])[:, 0]
  return _write_records(out_path, compression, dtype, (
      (example_id, frames[i], base.prepend(example_id, [],
                                           {name: outputs[name][i] for name in names})[1])
      for i, example_id in enumerate(ids)))


def _split_of(data_meta: records.RecordsMetadata, name: str) -> str:
  """The split whose shards include the data shard named ``name``."""
  return next(split for split, info in data_meta.splits.items()
              if any(shard.name == name for shard in info.shards))


def _write_utterance_view_shard(model, spec, data_meta: records.RecordsMetadata, utterances,
                                views: int, view_seed: int, data_path: str, out_path: str,
                                compression: str, dtype: str, batch_size: int,
                                progress: Callable[[int], None], first_view: int,
                                base: BaseViews) -> int:
  """Writes the teacher's ctc logits for ``views`` augmented views of every
  utterance of one raw data shard.

  View v of a record is its utterance augmented whole (``utterances``, a
  ``kws_tf.utterance_augment.UtteranceAugmenter`` whose
  ``max_samples`` is its split's longest, as in the student's pipeline) with
  seed ``augment.view_seed(id, v, view_seed)``, through the teacher's front end
  on its valid samples (and the view's tempo warp). A record stores ``frames``
  int64 ``[views]`` (each view's logit frames) and ``logits`` ``[sum of frames,
  vocabulary]``, the views' logits one after another. Views ``0..first_view -
  1`` come from ``base``.
  """
  import tensorflow as tf
  from kws_tf import augment, data
  parse = data.make_parser(data_meta, "raw", normalize=False)
  front_end = data.WaveformFrontEnd(spec.feature_params, spec.normalization,
                                    utterances.augmenter.warp_factors)
  examples = [parse(s) for s in data.records_dataset([data_path], compression)]
  order = np.argsort([int(e["num_frames"]) for e in examples], kind="stable")

  @tf.function(reduce_retracing=True)
  def teacher_input(ids, waveforms, lengths):  # utterances [batch] -> new views [batch * new]
    seeds = augment.view_seed(tf.repeat(ids, new),
                              tf.tile(tf.range(first_view, views), tf.shape(ids)), view_seed)
    waveforms = tf.repeat(waveforms, new, axis=0)
    choices = utterances.draw(seeds, tf.shape(waveforms)[1])
    waveforms, lengths = utterances.apply(waveforms, tf.repeat(lengths, new), choices)
    features = front_end(waveforms, utterances.augmenter.teacher_warp(choices), lengths)
    num_frames = front_end.config.num_frames(lengths)
    valid = tf.range(tf.shape(features)[1])[tf.newaxis] < num_frames[:, tf.newaxis]
    return tf.where(valid[:, :, tf.newaxis], features, 0.0), num_frames

  new = views - first_view
  results: Dict[int, tuple] = {}
  per_batch = max(1, batch_size // new)  # utterances, each made into ``new`` views
  for start in range(0, len(order), per_batch):
    chunk = order[start:start + per_batch]
    lengths = np.array([int(examples[i]["num_frames"]) for i in chunk], np.int32)
    waveforms = np.zeros([len(chunk), lengths.max()], np.float32)
    for row, i in enumerate(chunk):
      waveforms[row, :lengths[row]] = examples[i]["features"].numpy()[:, 0]
    features, num_frames = teacher_input(tf.stack([examples[i]["id"] for i in chunk]),
                                         tf.constant(waveforms), tf.constant(lengths))
    out = model({"features": features, "num_frames": num_frames}, training=False)
    logits, frames = out["logits"].numpy(), out["frames"].numpy()
    for row, i in enumerate(chunk):
      counts = [int(n) for n in frames[row * new:(row + 1) * new]]
      values = np.concatenate([logits[row * new + v, :n] for v, n in enumerate(counts)])
      results[int(i)] = base.prepend(examples[i]["id"].numpy(), counts,
                                     {"logits": values.astype(dtype)})
    progress(len(chunk) * new)
  return _write_records(
      out_path, compression, dtype,
      ((example["id"].numpy(), *results[i]) for i, example in enumerate(examples)))
