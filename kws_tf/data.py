"""tf.data pipelines over the converter's TFRecord shards.

Every pipeline yields dicts:

  id          string   [batch]
  features    float32  [batch, frames, channels]  (raw: channels 1, samples in [-1, 1])
  num_frames  int32    [batch]                    valid frames before padding
  kws:  label       int32  [batch]                class index
  ctc:  labels      int32  [batch, max_label]     character ids, padded with 0 (blank)
        label_length int32 [batch]

Shard order is the converter's (sorted by split and index), so without
shuffling record i of shard k arrives in the same place for every format and
for guidance shards of the same name.
"""
import dataclasses
import math
import os
from typing import Callable, Dict, List, Optional, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import numpy as np
import tensorflow as tf

from kws_tf import augment, features, records, utterance_augment, warp
from kws_tf import config as config_lib
from kws_tf.models import heads


# The window of a ctc pipeline's Augmenter, whose banks it uses (not its window).
UTTERANCE_BANK_WINDOW_SECONDS = 1.0


@dataclasses.dataclass(frozen=True)
class SpecAugment:
  """SpecAugment masks (Park et al. 2019) drawn with stateless random ops.

  ``freq_masks`` masks of ``f ~ U{0..freq_mask_param}`` consecutive channels
  starting at ``f0 ~ U{0..channels - f}`` and ``time_masks`` masks of at most
  ``time_mask_param`` frames likewise (the masks of tensorflow-io's
  ``freq_mask`` / ``time_mask``), applied to ``[frames, channels]`` features
  after normalisation (masked values are 0, the normalised mean).

  The masks are a function of a per-example ``seed`` (int64 ``[2]``), which
  ``make_dataset`` draws from a ``tf.data.Dataset.random`` stream: tf.data can
  checkpoint that stream, not the state of stateful random ops (which
  tensorflow-io uses), so a resumed run applies the same masks as an
  uninterrupted one.
  """
  freq_masks: int = 2
  freq_mask_param: int = 8
  time_masks: int = 2
  time_mask_param: int = 10

  def keep(self, seeds: tf.Tensor, frames, channels) -> tf.Tensor:
    """bool ``[batch, frames, channels]``: False where a mask falls; row b's masks
    are a function of ``seeds[b]`` (int ``[batch, 2]``) only."""
    masks = ([(2, self.freq_mask_param)] * self.freq_masks +
             [(1, self.time_mask_param)] * self.time_masks)
    u = augment.uniforms(seeds, 2 * len(masks))
    keep = tf.ones([tf.shape(u)[0], frames, channels], tf.bool)
    for i, (axis, param) in enumerate(masks):
      size = channels if axis == 2 else frames
      width = tf.minimum(tf.cast(u[:, 2 * i] * (param + 1), tf.int32), size)
      start = tf.cast(u[:, 2 * i + 1] * tf.cast(size - width + 1, tf.float32), tf.int32)
      index = tf.range(size)[tf.newaxis]
      outside = tf.logical_or(index < start[:, tf.newaxis],
                              index >= (start + width)[:, tf.newaxis])  # [batch, size]
      keep = tf.logical_and(keep, outside[:, tf.newaxis, :] if axis == 2 else
                            outside[:, :, tf.newaxis])
    return keep

  def __call__(self, features: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """``features [frames, channels]`` masked with the masks of ``seed`` (int ``[2]``)."""
    shape = tf.shape(features)
    keep = self.keep(tf.convert_to_tensor(seed)[tf.newaxis], shape[0], shape[1])[0]
    return tf.where(keep, features, tf.zeros_like(features))


def shard_paths(records_dir: str, fmt: str, split: str,
                metadata: Optional[records.RecordsMetadata] = None) -> List[str]:
  """The shards of one split and format, in order, as metadata.json lists them."""
  metadata = metadata or records.load_metadata(records_dir)
  if fmt not in metadata.formats:
    raise ValueError(f"{records_dir} has no format {fmt!r}; it has "
                     f"{sorted(metadata.formats)}")
  if split not in metadata.splits:
    raise ValueError(f"{records_dir} has no split {split!r}; it has "
                     f"{sorted(metadata.splits)}")
  paths = [os.path.join(records_dir, metadata.formats[fmt].dir, s.name)
           for s in metadata.splits[split].shards]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"shards listed in metadata.json are missing: {missing[:5]}")
  return paths


def make_parser(metadata: records.RecordsMetadata, fmt: str, normalize: bool = True,
                shift_range: bool = False) -> Callable:
  """Returns ``parse(serialized) -> dict`` for one record of ``fmt``.

  With ``normalize``, features are standardised per channel with the mean
  and standard deviation that metadata.json holds for the format. With
  ``shift_range`` (kws), the dict also holds the record's ``shift_range``
  (float32 ``[2]``, seconds).
  """
  task = metadata.task
  channels = metadata.formats[fmt].num_channels
  raw = metadata.formats[fmt].raw
  spec = {
      "id": tf.io.FixedLenFeature([], tf.string),
      "features": tf.io.FixedLenFeature([], tf.string),
      "num_frames": tf.io.FixedLenFeature([], tf.int64),
  }
  if task == "kws":
    spec["label"] = tf.io.FixedLenFeature([], tf.int64)
    if shift_range:
      spec["shift_range"] = tf.io.FixedLenFeature([2], tf.float32)
  else:
    spec["labels"] = tf.io.VarLenFeature(tf.int64)
  mean = std = None
  if normalize:
    stats = metadata.normalization.get(fmt)
    if stats is None:
      raise ValueError(f"metadata.json has no normalisation statistics for {fmt!r}")
    mean = tf.constant(stats["mean"], tf.float32)
    std = tf.constant(stats["std"], tf.float32)

  def parse(serialized):
    example = tf.io.parse_single_example(serialized, spec)
    if raw:
      values = tf.cast(tf.io.decode_raw(example["features"], tf.int16, little_endian=True),
                       tf.float32) / 32768.0
    else:
      values = tf.io.decode_raw(example["features"], tf.float32, little_endian=True)
    values = tf.reshape(values, [-1, channels])
    if normalize:
      values = (values - mean) / std
    out = {"id": example["id"], "features": values,
           "num_frames": tf.cast(example["num_frames"], tf.int32)}
    if task == "kws":
      out["label"] = tf.cast(example["label"], tf.int32)
      if shift_range:
        out["shift_range"] = example["shift_range"]
    else:
      labels = tf.cast(tf.sparse.to_dense(example["labels"]), tf.int32)
      out["labels"] = labels
      out["label_length"] = tf.shape(labels)[0]
    return out

  return parse


def records_dataset(paths: Sequence[str], compression: str) -> tf.data.Dataset:
  """Serialized records of the shards, in shard order."""
  return tf.data.TFRecordDataset(list(paths), records.tf_compression(compression),
                                 num_parallel_reads=None)


def bucket_boundaries(max_frames: int, buckets: int = 8, min_frames: int = 50) -> List[int]:
  """Geometric length boundaries, frames, for bucketing variable-length data."""
  if max_frames <= min_frames or buckets < 2:
    return [max_frames + 1]
  ratio = (max_frames / min_frames) ** (1 / (buckets - 1))
  bounds = sorted({int(round(min_frames * ratio ** i)) for i in range(buckets)})
  return bounds[:-1] + [max_frames + 1]


def make_dataset(records_dir: str, fmt: str, split: str, batch_size: int,
                 training: bool = False, normalize: bool = True,
                 spec_augment: Optional[SpecAugment] = None,
                 shuffle_buffer: int = 2048, bucket: bool = True,
                 seed: Optional[int] = None, repeat: bool = False,
                 drop_remainder: bool = False,
                 guidance: Optional["Guidance"] = None,
                 keep: Optional[Callable[[Dict[str, tf.Tensor]], tf.Tensor]] = None,
                 augmenter: Optional[augment.Augmenter] = None
                 ) -> tf.data.Dataset:
  """The input pipeline for one split: parse, normalise, augment, batch.

  Args:
    training: shuffle (with ``seed``) and apply ``spec_augment`` and ``augmenter``.
    bucket: ctc only; batch examples of similar length together (boundaries
      from the split's maximum length), padding within a bucket.
    guidance: join guidance records shard by shard (see ``Guidance``). ctc
      guidance logits must come at the student's logit frame rate,
      ``heads.CTC_TIME_STRIDE`` frames of ``fmt`` (``Guidance.check_frame_seconds``).
    keep: optional predicate on a parsed example; examples for which it is
      False are dropped before shuffling (see ``id_holdout``).
    augmenter: training only: read the ``raw`` records, augment each waveform
      with its own seed, and compute ``fmt``'s features from it with the
      records' front-end parameters. kws: a window of the clip with context;
      with ``guidance`` of several views (``Guidance.views``), each example
      takes one of the views at random: the window is the view's
      (``augment.view_seed``) and ``guidance_logits`` (and
      ``guidance_features`` when stored) the teacher's for it, or with
      ``augment.fresh_view_prob`` a fresh view whose ``guidance_weight`` is 0.
      ctc: the whole utterance (``utterance_augment``), bucketed by length.
  """
  metadata = records.load_metadata(records_dir)
  compression = metadata.compression
  if augmenter is not None:
    if not training:
      raise ValueError("waveform augmentation is for training pipelines")
    augmented = _augmented_utterances if metadata.task == "ctc" else _augmented_batches
    return _without_autotuning(augmented(
        records_dir, metadata, split, fmt, normalize, augmenter, spec_augment, guidance, keep,
        shuffle_buffer, seed, repeat, batch_size, drop_remainder))
  paths = shard_paths(records_dir, fmt, split, metadata)
  parse = make_parser(metadata, fmt, normalize)
  if guidance is not None:
    if metadata.task == "ctc":
      guidance.check_frame_seconds(heads.CTC_TIME_STRIDE * metadata.formats[fmt].frame_seconds)
    ds = guidance.join(paths, compression, parse)
  else:
    ds = records_dataset(paths, compression).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  if keep is not None:
    ds = ds.filter(keep)
  if training:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  if training and spec_augment is not None:
    seeds = tf.data.Dataset.random(seed=seed).batch(2)
    ds = tf.data.Dataset.zip((ds, seeds)).map(
        lambda x, s: dict(x, features=spec_augment(x["features"], s)),
        num_parallel_calls=tf.data.AUTOTUNE)
  if metadata.task == "ctc" and bucket:
    max_frames = metadata.splits[split].max_frames[fmt]
    bounds = bucket_boundaries(max_frames)
    ds = ds.bucket_by_sequence_length(
        lambda x: x["num_frames"], bounds, [batch_size] * (len(bounds) + 1),
        drop_remainder=drop_remainder)
  else:
    ds = ds.padded_batch(batch_size, drop_remainder=drop_remainder)
  ds = ds.prefetch(tf.data.AUTOTUNE)
  return _without_autotuning(ds) if training else ds


def _without_autotuning(ds: tf.data.Dataset) -> tf.data.Dataset:
  """``ds`` with tf.data's autotuning off (``AUTOTUNE`` parallelism and buffer
  sizes take TensorFlow's fixed defaults). With autotuning on, deleting a
  training run's iterator (which the train step reads inside a tf.function) at
  the end of the run waited for tf.data's autotuning thread: 16-26 s in four
  distillation runs of nine on the demo's records, 1.5-2.3 s in three standard
  runs of four (TensorFlow 2.21). The training throughput is the same either
  way."""
  options = tf.data.Options()
  options.autotune.enabled = False
  return ds.with_options(options)


def _augmented_batches(records_dir: str, metadata: records.RecordsMetadata, split: str, fmt: str, normalize: bool,
                       augmenter: augment.Augmenter, spec_augment: Optional[SpecAugment],
                       guidance: Optional["Guidance"], keep: Optional[Callable],
                       shuffle_buffer: int, seed: Optional[int], repeat: bool, batch_size: int,
                       drop_remainder: bool) -> tf.data.Dataset:
  """Batches of augmented kws training examples from the raw records.

  Serialized records (joined with ``guidance``) are shuffled and batched; then,
  per batch: parsing, a view of ``guidance`` per example when it has several,
  the random choices (``Augmenter.draw``), the signal processing
  (``Augmenter.apply``), ``fmt``'s front end and SpecAugment's masks. Each
  example's randomness comes from its own four draws of a
  ``tf.data.Dataset.random`` stream, so a resumed run repeats it.

  With ``augment.fresh_view_prob`` > 0 and guidance of views, that share of
  the examples takes a fresh view (the seeds of its step's draws, as without
  guidance) and ``guidance_weight`` float32 ``[B]`` is 0 for them, 1 for the
  examples on a stored view.
  """
  check_context(metadata, records_dir)
  paths = shard_paths(records_dir, "raw", split, metadata)
  compression = metadata.compression
  samples = metadata.raw_clip_samples
  parse = raw_batch_parser(metadata)
  front_end = WaveformFrontEnd.of_records(metadata, fmt, normalize, augmenter.warp_factors)
  frames = front_end.config.num_frames(augmenter.window)
  channels = front_end.config.num_channels
  if guidance is not None:
    ds = guidance.pairs(paths, compression)
  else:
    ds = records_dataset(paths, compression).map(lambda r: (r,))
  if keep is not None:
    ds = ds.filter(lambda record, *_: keep(
        tf.io.parse_single_example(record, {"id": tf.io.FixedLenFeature([], tf.string)})))
  ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  keys = tf.data.Dataset.random(seed=seed).batch(4).batch(batch_size)
  fresh_view_prob = augmenter.config.fresh_view_prob

  def process(batch, keys):
    x = parse(batch[0])
    keys = keys[:tf.shape(x["id"])[0]]
    seeds = keys[:, 2:]
    if guidance is not None:
      x.update(guidance.parse(batch[1]))
      if guidance.views:
        view = tf.cast(tf.math.floormod(keys[:, 0], guidance.views), tf.int32)
        seeds = augment.view_seed(x["id"], view, guidance.view_seed)
        for name in ("guidance_logits", "guidance_features"):
          if name in x:
            x[name] = tf.gather(x[name], view, axis=1, batch_dims=1)
        if fresh_view_prob:
          # The bits of the view draw left over by the view's index, as a uniform in [0, 1).
          u = tf.cast(tf.math.floormod(tf.math.floordiv(keys[:, 0], guidance.views), 2 ** 24),
                      tf.float32) / 2 ** 24
          fresh = u < fresh_view_prob
          seeds = tf.where(fresh[:, None], keys[:, 2:], seeds)
          x["guidance_weight"] = tf.cast(tf.logical_not(fresh), tf.float32)
    waveforms = x.pop("waveform")
    choices = augmenter.draw(seeds, x.pop("shift_range"), samples, step_seeds=keys[:, 2:])
    values = front_end(augmenter.apply(waveforms, choices), choices["warp"])
    if spec_augment is not None:
      values = tf.where(spec_augment.keep(keys[:, :2], frames, channels), values, 0.0)
    x["features"] = values
    x["num_frames"] = tf.fill(tf.shape(values)[:1], frames)
    return x

  ds = tf.data.Dataset.zip((ds.batch(batch_size, drop_remainder=drop_remainder), keys))
  return ds.map(process, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def _augmented_utterances(records_dir: str, metadata: records.RecordsMetadata, split: str,
                          fmt: str, normalize: bool, augmenter: augment.Augmenter,
                          spec_augment: Optional[SpecAugment], guidance: Optional["Guidance"],
                          keep: Optional[Callable], shuffle_buffer: int, seed: Optional[int],
                          repeat: bool, batch_size: int, drop_remainder: bool) -> tf.data.Dataset:
  """Batches of augmented ctc training utterances from the raw records.

  Utterances are shuffled, each paired with four draws of a
  ``tf.data.Dataset.random`` stream (so a resumed run repeats them), bucketed
  by length and padded; then, per batch: ``utterance_augment`` with the last
  two draws as each utterance's seed, ``fmt``'s front end on the valid samples
  (frames past an utterance's end are 0, as in the stored records' batches)
  and SpecAugment's masks from the first two draws.

  With ``guidance`` of several views, each utterance takes view ``first draw
  mod views`` instead: its seed is the view's (``augment.view_seed``) and its
  ``guidance_logits`` the teacher's logits for that view (``Guidance.utterance_view``).
  """
  if guidance is not None and not guidance.views:
    raise ValueError("the ctc guidance holds the teacher's logits for the clean utterances; "
                     "augmented utterances need guidance of their views (create_guidance "
                     "--views)")
  check_context(metadata, records_dir)
  paths = shard_paths(records_dir, "raw", split, metadata)
  parse = make_parser(metadata, "raw", normalize=False)
  front_end = WaveformFrontEnd.of_records(metadata, fmt, normalize, augmenter.warp_factors)
  max_samples = metadata.splits[split].max_frames["raw"]
  utterances = utterance_augment.UtteranceAugmenter(augmenter, max_samples)
  channels = front_end.config.num_channels
  if guidance is not None:
    guidance.check_frame_seconds(heads.CTC_TIME_STRIDE * metadata.formats[fmt].frame_seconds)
    ds = guidance.join(paths, metadata.compression, parse)
  else:
    ds = records_dataset(paths, metadata.compression).map(parse,
                                                          num_parallel_calls=tf.data.AUTOTUNE)
  if keep is not None:
    ds = ds.filter(keep)
  ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()

  def with_keys(x, keys):
    if guidance is None:
      return dict(x, keys=keys)
    view = tf.cast(tf.math.floormod(keys[0], guidance.views), tf.int32)
    seed = augment.view_seed(x["id"], view, guidance.view_seed)
    return dict(guidance.utterance_view(x, view), keys=tf.concat([keys[:2], seed], 0))

  ds = tf.data.Dataset.zip((ds, tf.data.Dataset.random(seed=seed).batch(4))).map(
      with_keys, num_parallel_calls=tf.data.AUTOTUNE)
  bounds = bucket_boundaries(max_samples, min_frames=metadata.sample_rate)
  ds = ds.bucket_by_sequence_length(lambda x: x["num_frames"], bounds,
                                    [batch_size] * (len(bounds) + 1),
                                    drop_remainder=drop_remainder)

  def process(x):
    keys = x.pop("keys")
    waveforms = x.pop("features")[:, :, 0]
    choices = utterances.draw(keys[:, 2:], tf.shape(waveforms)[1])
    waveforms, lengths = utterances.apply(waveforms, x["num_frames"], choices)
    values = front_end(waveforms, choices["warp"], lengths)
    num_frames = front_end.config.num_frames(lengths)
    valid = tf.range(tf.shape(values)[1])[tf.newaxis] < num_frames[:, tf.newaxis]
    values = tf.where(valid[:, :, tf.newaxis], values, 0.0)
    if spec_augment is not None:
      values = tf.where(spec_augment.keep(keys[:, :2], tf.shape(values)[1], channels), values, 0.0)
    return dict(x, features=values, num_frames=num_frames)

  return ds.map(process, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def offset_dataset(records_dir: str, split: str, front_end: "WaveformFrontEnd",
                   max_seconds: float, seed: int, batch_size: int) -> tf.data.Dataset:
  """kws evaluation windows moved off the clip's centre, in record order.

  Each window starts at a uniform random offset within ``[-max_seconds,
  max_seconds]`` and the record's ``shift_range`` (so its label stays true),
  drawn from ``augment.view_seed(id, 0, seed)``: the same windows on every run.
  Batches hold ``id``, ``label``, ``features`` (``front_end`` of the windows,
  ``[batch, frames, channels]``) and ``num_frames``, like ``make_dataset``'s.
  """
  metadata = records.load_metadata(records_dir)
  check_context(metadata, records_dir)
  config = config_lib.AugmentConfig(
      enabled=True, max_shift_seconds=max_seconds, speed_prob=0.0, reverb_prob=0.0,
      noise_prob=0.0, telephone_prob=0.0, gain_db_min=0.0, gain_db_max=0.0)
  augmenter = augment.Augmenter(config, metadata.sample_rate, metadata.clip_seconds)
  samples = metadata.raw_clip_samples
  parse = raw_batch_parser(metadata)

  def windows(x):
    choices = augmenter.draw(augment.view_seed(x["id"], 0, seed), x.pop("shift_range"), samples)
    values = front_end(augmenter.apply(x.pop("waveform"), choices))
    return dict(x, features=values, num_frames=tf.fill(tf.shape(values)[:1], tf.shape(values)[1]))

  paths = shard_paths(records_dir, "raw", split, metadata)
  return records_dataset(paths, metadata.compression).batch(batch_size).map(
      parse).map(windows).prefetch(tf.data.AUTOTUNE)


def raw_batch_parser(metadata: records.RecordsMetadata
                     ) -> Callable[[tf.Tensor], Dict[str, tf.Tensor]]:
  """Returns ``parse(serialized [batch]) -> dict`` for kws raw records with context:
  ``id`` [batch], ``label`` int32 [batch], ``shift_range`` float32 [batch, 2]
  (seconds) and ``waveform`` float32 [batch, context samples] in [-1, 1]."""
  samples = metadata.raw_clip_samples
  dtype = tf.int16 if metadata.formats["raw"].dtype == "int16" else tf.float32
  spec = {"id": tf.io.FixedLenFeature([], tf.string),
          "features": tf.io.FixedLenFeature([], tf.string),
          "label": tf.io.FixedLenFeature([], tf.int64),
          "shift_range": tf.io.FixedLenFeature([2], tf.float32)}

  def parse(serialized):
    example = tf.io.parse_example(serialized, spec)
    waveform = tf.cast(tf.io.decode_raw(example["features"], dtype, little_endian=True),
                       tf.float32)
    if dtype == tf.int16:
      waveform = waveform / 32768.0
    return {"id": example["id"], "label": tf.cast(example["label"], tf.int32),
            "shift_range": example["shift_range"],
            "waveform": tf.ensure_shape(waveform, [None, samples])}

  return parse


def has_context(metadata: records.RecordsMetadata) -> bool:
  """Whether the records hold kws ``raw`` clips with context around them."""
  return "raw" in metadata.formats and metadata.context_seconds > 0


def check_context(metadata: records.RecordsMetadata, records_dir: str) -> None:
  """ValueError unless the records hold the ``raw`` audio that waveform
  augmentation reads: whole ctc utterances, or kws clips with context around them."""
  if "raw" not in metadata.formats:
    raise ValueError(f"waveform augmentation reads the raw format, which {records_dir} does "
                     "not have: convert with --formats=raw,<feature formats>")
  if metadata.task == "kws" and metadata.context_seconds <= 0:
    raise ValueError(f"the raw clips of {records_dir} have no context around them: convert "
                     "with --context_seconds > 0 (e.g. 0.5)")


class WaveformFrontEnd:
  """Features of augmented windows, as the converter computes them.

  Called with windows (float32 ``[batch, samples]``, zero-padded past
  ``lengths [batch]`` when given), it returns their features ``[batch,
  frames, channels]`` (``features.compute``), warped by ``warp_factors[warp_index[b]]``
  when given each example's ``warp_index`` (int32 ``[batch]``, -1: none;
  ``kws_tf.warp``), then standardised with ``normalization``'s per-channel
  ``mean`` and ``std`` when given.

  Args:
    feature_params: a ``kws_tf.features`` config as a dict.
    normalization: ``{"mean": [...], "std": [...]}`` or None.
    warp_factors: the vocal tract length perturbation's factors.
  """

  def __init__(self, feature_params: dict, normalization: Optional[dict],
               warp_factors: Sequence[float] = ()):
    self.config = features.from_dict(feature_params)
    self.warp = warp.FeatureWarp(self.config, warp_factors) if warp_factors else None
    self.mean = self.std = None
    if normalization is not None:
      self.mean = tf.constant(normalization["mean"], tf.float32)
      self.std = tf.constant(normalization["std"], tf.float32)

  @classmethod
  def of_records(cls, metadata: records.RecordsMetadata, fmt: str, normalize: bool,
                 warp_factors: Sequence[float] = ()) -> "WaveformFrontEnd":
    """The front end of the records' ``fmt``, standardised with their statistics,
    warping by ``warp_factors`` (``kws_tf.warp``) when given."""
    if fmt not in metadata.formats:
      raise ValueError(f"the records have no {fmt!r} format, whose front-end parameters "
                       f"the augmented pipeline needs (they have {sorted(metadata.formats)})")
    stats = None
    if normalize:
      stats = metadata.normalization.get(fmt)
      if stats is None:
        raise ValueError(f"metadata.json has no normalisation statistics for {fmt!r}")
    return cls(metadata.formats[fmt].params, stats, warp_factors)

  def __call__(self, windows: tf.Tensor, warp_index: Optional[tf.Tensor] = None,
               lengths: Optional[tf.Tensor] = None) -> tf.Tensor:
    values = self.config.compute(windows, lengths)
    if warp_index is not None and self.warp is not None:
      values = self.warp(values, warp_index)
    if self.mean is not None:
      values = (values - self.mean) / self.std
    return values


def babble_bank(records_dir: str, split: str, seconds: float) -> np.ndarray:
  """float32 ``[samples]``: the first records of ``split``'s raw shards end to
  end, up to ``seconds``: kws, the negative clips (without context); ctc, the
  utterances.

  Negatives hold speech without keywords, so babble made from them never
  puts a keyword behind a clip.
  """
  metadata = records.load_metadata(records_dir)
  check_context(metadata, records_dir)
  rate = metadata.sample_rate
  kws = metadata.task == "kws"
  context = metadata.context_samples if kws else 0
  parse = make_parser(metadata, "raw", normalize=False)
  wanted, parts, total = int(round(seconds * rate)), [], 0
  for example in records_dataset(shard_paths(records_dir, "raw", split, metadata),
                                 metadata.compression).map(parse):
    if kws and int(example["label"]) != metadata.negative_label:
      continue
    clip = example["features"].numpy()[context:len(example["features"]) - context, 0]
    parts.append(clip)
    total += len(clip)
    if total >= wanted:
      break
  if not parts:
    raise ValueError(f"{records_dir} has no {'negative clips' if kws else 'utterances'} in "
                     f"{split!r} to make babble from")
  return np.concatenate(parts)[:wanted]


def id_holdout(fraction: float, held_out: bool) -> Callable[[Dict[str, tf.Tensor]], tf.Tensor]:
  """A ``keep`` predicate that splits examples by a hash of their id.

  An example is held out when its id's FarmHash bucket out of 10000 is below
  ``fraction * 10000``: the same examples for every run, format and guidance.
  ``held_out`` selects the held-out side (validation) or the rest (training).
  """
  threshold = int(round(fraction * 10000))

  def keep(example):
    bucket = tf.strings.to_hash_bucket_fast(example["id"], 10000)
    return tf.less(bucket, threshold) if held_out else tf.greater_equal(bucket, threshold)

  return keep


class Guidance:
  """Joins data shards with guidance shards of the same name, record by record.

  Args:
    guidance_dir: folder holding ``<shard name>`` files mirroring the data shards.
    spec: ``tf.io.parse_single_example`` spec of a guidance record; it must
      contain ``id`` (bytes).
    compression: of the guidance shards (``none|gzip``).
    prefix: added to every guidance key in the joined example.
    views, view_seed: guidance of several augmented views per example: the
      logits are ``[views, classes]``, view v made with
      ``augment.view_seed(id, v, view_seed)`` (0: one clean view).
    metadata: the guidance folder's metadata.json.

  A record whose id differs from the data record's id stops the pipeline with
  an InvalidArgumentError that names both shards and both ids; a guidance
  shard with fewer or more records than its data shard stops it as well.
  """

  def __init__(self, guidance_dir: str, spec: Dict[str, tf.io.FixedLenFeature],
               compression: str = "none", prefix: str = "guidance_",
               decode: Optional[Callable[[Dict[str, tf.Tensor]], Dict[str, tf.Tensor]]] = None,
               views: int = 0, view_seed: int = 0, metadata: Optional[dict] = None):
    if "id" not in spec:
      raise ValueError("the guidance spec must contain 'id'")
    self.guidance_dir = guidance_dir
    self.spec = spec
    self.compression = compression
    self.prefix = prefix
    self.decode = decode
    self.views = views
    self.view_seed = view_seed
    self.metadata = metadata or {}

  @property
  def frame_seconds(self) -> Optional[float]:
    """Seconds between two frames of the teacher's frame-level outputs (ctc logits,
    hints), as create_guidance recorded it; None when not recorded."""
    return self.metadata.get("frame_seconds")

  def check_frame_seconds(self, student_frame_seconds: float) -> None:
    """ValueError unless frame-level logits (ctc guidance ``[frames, vocabulary]``)
    come one every ``student_frame_seconds``, the student's logit frame.

    The message gives both frame durations in ms. Other guidance passes: kws
    logits are one vector per clip, and FitNet aligns hints itself
    (``fitnet.alignment``).
    """
    if self.metadata.get("task") != "ctc" or "logits" not in self.metadata.get("outputs", {}):
      return
    teacher = self.frame_seconds
    if teacher is None or not math.isclose(teacher, student_frame_seconds, rel_tol=1e-6):
      recorded = "no recorded frame rate" if teacher is None else \
          f"a frame every {teacher * 1000:g} ms"
      raise ValueError(
          f"the ctc logits in {self.guidance_dir} have {recorded} but the student's logits "
          f"have a frame every {student_frame_seconds * 1000:g} ms: make the guidance with a "
          "teacher whose frames match the student's (feature hop x time stride)")

  def guidance_paths(self, data_paths: Sequence[str]) -> List[str]:
    paths = [os.path.join(self.guidance_dir, os.path.basename(p)) for p in data_paths]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise FileNotFoundError(
          f"guidance shards missing in {self.guidance_dir}: "
          f"{[os.path.basename(p) for p in missing[:5]]} (they must mirror the data shards)")
    return paths

  def pairs(self, data_paths: Sequence[str], data_compression: str) -> tf.data.Dataset:
    """``(data record, guidance record)`` serialized pairs, shard by shard, ids checked."""
    guidance_paths = self.guidance_paths(data_paths)
    pairs = tf.data.Dataset.from_tensor_slices(
        (list(data_paths), guidance_paths))
    data_type = records.tf_compression(data_compression)
    guidance_type = records.tf_compression(self.compression)
    spec = self.spec

    def one_shard(data_path, guidance_path):
      data = tf.data.TFRecordDataset(data_path, data_type)
      guide = tf.data.TFRecordDataset(guidance_path, guidance_type)
      end = tf.constant(b"<end of shard>")
      # Pad both sides with an end marker so a length mismatch surfaces as an id mismatch.
      data = data.map(lambda s: (s, tf.constant(True))).concatenate(
          tf.data.Dataset.from_tensors((end, tf.constant(False))))
      guide = guide.map(lambda s: (s, tf.constant(True))).concatenate(
          tf.data.Dataset.from_tensors((end, tf.constant(False))))

      def check(d, g):
        data_record, data_real = d
        guide_record, guide_real = g
        data_id = tf.cond(data_real, lambda: tf.io.parse_single_example(
            data_record, {"id": tf.io.FixedLenFeature([], tf.string)})["id"], lambda: end)
        guide_id = tf.cond(guide_real, lambda: tf.io.parse_single_example(
            guide_record, {"id": spec["id"]})["id"], lambda: end)
        ok = tf.debugging.Assert(
            tf.equal(data_id, guide_id),
            ["guidance does not match the data: data shard", data_path, "has id", data_id,
             "where guidance shard", guidance_path, "has id", guide_id])
        with tf.control_dependencies([ok]):
          return data_record, guide_record, tf.logical_and(data_real, guide_real)

      return tf.data.Dataset.zip((data, guide)).map(check).filter(
          lambda d, g, real: real).map(lambda d, g, real: (d, g))

    return pairs.flat_map(one_shard)

  def utterance_view(self, example: Dict[str, tf.Tensor], view: tf.Tensor) -> Dict[str, tf.Tensor]:
    """``example`` (one joined ctc record of several views) with the guidance of
    view ``view`` alone: ``guidance_frames`` (int32 scalar) and
    ``guidance_logits`` ``[frames, vocabulary]``."""
    frames = example["guidance_frames"]
    start = tf.reduce_sum(frames[:view])
    logits = example["guidance_logits"][start:start + frames[view]]
    return dict(example, guidance_frames=frames[view], guidance_logits=logits)

  def parse(self, serialized: tf.Tensor) -> Dict[str, tf.Tensor]:
    """Guidance records (a scalar or ``[batch]`` of serialized records) as a dict of
    ``prefix + key`` tensors (the ids left out), decoded when ``decode`` is given."""
    guide = tf.io.parse_example(serialized, self.spec)
    if self.decode is not None:
      guide = self.decode(guide)
    return {self.prefix + key: value for key, value in guide.items() if key != "id"}

  def join(self, data_paths: Sequence[str], data_compression: str,
           parse: Callable) -> tf.data.Dataset:
    """Parsed data examples (``parse``) with the guidance keys of their records."""
    return self.pairs(data_paths, data_compression).map(
        lambda data_record, guide_record: dict(parse(data_record), **self.parse(guide_record)),
        num_parallel_calls=tf.data.AUTOTUNE)


def open_guidance(guidance_dir: str, data_metadata: records.RecordsMetadata) -> Guidance:
  """The ``Guidance`` for a ``create_guidance`` output folder.

  Reads ``<guidance_dir>/metadata.json`` (written by data_prep/create_guidance),
  refuses guidance made from other data (the data fingerprints differ), and
  decodes every output to float32 of its recorded shape, so joined examples
  carry ``guidance_logits`` (kws ``[classes]``, ctc ``[frames, vocabulary]``),
  ``guidance_frames`` and, when written, ``guidance_features``,
  ``guidance_hint`` ``[frames, d_model]`` or ``guidance_hint_pooled``; guidance
  of several views (``--views``) holds kws ``guidance_logits`` ``[views, classes]``
  (and ``guidance_features`` ``[views, d]`` when written), ctc ``guidance_frames``
  ``[views]`` and ``guidance_logits`` ``[sum of frames, vocabulary]`` (the views
  one after another; ``Guidance.utterance_view``).
  """
  meta_path = os.path.join(guidance_dir, records.METADATA_FILE)
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{meta_path} not found: is {guidance_dir} a create_guidance output?")
  meta = records.read_json(meta_path)
  if meta["data_fingerprint"] != data_metadata.fingerprint:
    raise ValueError(
        f"guidance in {guidance_dir} was made from other data: its data fingerprint is "
        f"{meta['data_fingerprint']}, the records' fingerprint is {data_metadata.fingerprint}")
  dtype = tf.as_dtype(meta["dtype"])
  outputs = meta["outputs"]
  views = meta.get("views", 0)
  ctc_views = views and meta.get("task") == "ctc"
  spec = {"id": tf.io.FixedLenFeature([], tf.string),
          "frames": tf.io.FixedLenFeature([views] if ctc_views else [], tf.int64)}
  spec.update({name: tf.io.FixedLenFeature([], tf.string) for name in outputs})

  def decode(guide):  # one record (scalars) or a batch of them ([batch])
    out = {"frames": tf.cast(guide["frames"], tf.int32)}
    for name, info in outputs.items():
      values = tf.io.decode_raw(guide[name], dtype, little_endian=True)
      shape = [-1 if size is None else size for size in info["shape"]]
      out[name] = tf.reshape(tf.cast(values, tf.float32),
                             tf.concat([tf.shape(guide[name]), shape], 0))
    return out

  return Guidance(guidance_dir, spec, meta["compression"], decode=decode,
                  views=views, view_seed=meta.get("view_seed", 0), metadata=meta)


def check_views(guidance: Guidance, config, train_split: str) -> None:
  """ValueError unless ``guidance`` holds the teacher's logits of the clips the
  student sees: of the clean clips when ``config`` (``config.AugmentConfig``)
  is off, of views made with the same augment section and babble split
  (``train_split``) when it is on."""
  where = guidance.guidance_dir
  if not config.enabled:
    if guidance.views:
      raise ValueError(f"{where} holds the teacher's logits for {guidance.views} augmented "
                       "views per clip: train with the augment section they were made with "
                       "(augment.enabled=true)")
    return
  if not guidance.views:
    raise ValueError(
        f"augment.enabled: the student would see augmented clips while {where} holds the "
        "teacher's logits for the clean ones; make guidance of the same views: "
        "kws-create-guidance --views=8 --augment_recipe=<this recipe> (same --override)")
  wanted = augment.view_fields(config)
  made = guidance.metadata.get("augment", {})
  differ = sorted(k for k in set(wanted) | set(made) if wanted.get(k) != made.get(k))
  if guidance.metadata.get("babble_split") != train_split:
    differ.append("data.train_split (babble)")
  if differ:
    raise ValueError(f"the views in {where} were made with another augment section (differs "
                     f"in: {', '.join(differ)}); make them again with this recipe")


def make_augmenter(records_dir: str, config, split: str) -> augment.Augmenter:
  """The ``Augmenter`` of a recipe's ``augment`` section (``config.AugmentConfig``)
  for ``records_dir``: babble from ``split``'s negative clips (ctc: its
  utterances), and the noise and impulse-response folders the section names,
  at the records' sample rate. Its window is the kws clip; ctc utterances
  (``utterance_augment``) use its choices and banks, not its window, which
  is then ``UTTERANCE_BANK_WINDOW_SECONDS``."""
  metadata = records.load_metadata(records_dir)
  check_context(metadata, records_dir)
  rate = metadata.sample_rate
  babble = (babble_bank(records_dir, split, config.babble_seconds)
            if config.babble_weight > 0 else None)
  noise = augment.load_noise_bank(config.noise_dir, rate) if config.noise_dir else None
  rirs = augment.load_rirs(config.rir_dir, rate, config.rt60_max) if config.rir_dir else None
  window = metadata.clip_seconds if metadata.task == "kws" else UTTERANCE_BANK_WINDOW_SECONDS
  return augment.Augmenter(config, rate, window, babble=babble, noise=noise, rirs=rirs)
