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
import os
from typing import Callable, Dict, List, Optional, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf

from kws_tf import records


@dataclasses.dataclass(frozen=True)
class SpecAugment:
  """SpecAugment masks (Park et al. 2019) with tensorflow-io.

  ``freq_masks`` masks of at most ``freq_mask_param`` channels and
  ``time_masks`` masks of at most ``time_mask_param`` frames, applied to
  ``[frames, channels]`` features after normalisation (masked values are 0,
  the normalised mean).
  """
  freq_masks: int = 2
  freq_mask_param: int = 8
  time_masks: int = 2
  time_mask_param: int = 10

  def __call__(self, features: tf.Tensor) -> tf.Tensor:
    import tensorflow_io as tfio
    for _ in range(self.freq_masks):
      features = tfio.audio.freq_mask(features, param=self.freq_mask_param)
    for _ in range(self.time_masks):
      features = tfio.audio.time_mask(features, param=self.time_mask_param)
    return features


def shard_paths(records_dir: str, fmt: str, split: str,
                metadata: Optional[dict] = None) -> List[str]:
  """The shards of one split and format, in order, as metadata.json lists them."""
  metadata = metadata or records.load_metadata(records_dir)
  if fmt not in metadata["formats"]:
    raise ValueError(f"{records_dir} has no format {fmt!r}; it has "
                     f"{sorted(metadata['formats'])}")
  if split not in metadata["splits"]:
    raise ValueError(f"{records_dir} has no split {split!r}; it has "
                     f"{sorted(metadata['splits'])}")
  paths = [os.path.join(records_dir, metadata["formats"][fmt]["dir"], s["name"])
           for s in metadata["splits"][split]["shards"]]
  missing = [p for p in paths if not os.path.exists(p)]
  if missing:
    raise FileNotFoundError(f"shards listed in metadata.json are missing: {missing[:5]}")
  return paths


def make_parser(metadata: dict, fmt: str, normalize: bool = True) -> Callable:
  """Returns ``parse(serialized) -> dict`` for one record of ``fmt``.

  With ``normalize``, features are standardised per channel with the mean
  and standard deviation that metadata.json holds for the format.
  """
  task = metadata["task"]
  channels = metadata["formats"][fmt]["num_channels"]
  raw = metadata["formats"][fmt]["dtype"] == "int16"
  spec = {
      "id": tf.io.FixedLenFeature([], tf.string),
      "features": tf.io.FixedLenFeature([], tf.string),
      "num_frames": tf.io.FixedLenFeature([], tf.int64),
  }
  if task == "kws":
    spec["label"] = tf.io.FixedLenFeature([], tf.int64)
  else:
    spec["labels"] = tf.io.VarLenFeature(tf.int64)
  mean = std = None
  if normalize:
    stats = metadata["normalization"].get(fmt)
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
                 guidance: Optional["Guidance"] = None) -> tf.data.Dataset:
  """The input pipeline for one split: parse, normalise, augment, batch.

  Args:
    training: shuffle (with ``seed``) and apply ``spec_augment``.
    bucket: ctc only; batch examples of similar length together (boundaries
      from the split's maximum length), padding within a bucket.
    guidance: join guidance records shard by shard (see ``Guidance``).
  """
  metadata = records.load_metadata(records_dir)
  compression = metadata["params"]["compression"]
  paths = shard_paths(records_dir, fmt, split, metadata)
  parse = make_parser(metadata, fmt, normalize)
  if guidance is not None:
    ds = guidance.join(paths, compression, parse)
  else:
    ds = records_dataset(paths, compression).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
  if training:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    ds = ds.repeat()
  if training and spec_augment is not None:
    ds = ds.map(lambda x: dict(x, features=spec_augment(x["features"])),
                num_parallel_calls=tf.data.AUTOTUNE)
  if metadata["task"] == "ctc" and bucket:
    max_frames = metadata["splits"][split]["max_frames"][fmt]
    bounds = bucket_boundaries(max_frames)
    ds = ds.bucket_by_sequence_length(
        lambda x: x["num_frames"], bounds, [batch_size] * (len(bounds) + 1),
        drop_remainder=drop_remainder)
  else:
    ds = ds.padded_batch(batch_size, drop_remainder=drop_remainder)
  return ds.prefetch(tf.data.AUTOTUNE)


class Guidance:
  """Joins data shards with guidance shards of the same name, record by record.

  Args:
    guidance_dir: folder holding ``<shard name>`` files mirroring the data shards.
    spec: ``tf.io.parse_single_example`` spec of a guidance record; it must
      contain ``id`` (bytes).
    compression: of the guidance shards (``none|gzip``).
    prefix: added to every guidance key in the joined example.

  A record whose id differs from the data record's id stops the pipeline with
  an InvalidArgumentError that names both shards and both ids; a guidance
  shard with fewer or more records than its data shard stops it as well.
  """

  def __init__(self, guidance_dir: str, spec: Dict[str, tf.io.FixedLenFeature],
               compression: str = "none", prefix: str = "guidance_"):
    if "id" not in spec:
      raise ValueError("the guidance spec must contain 'id'")
    self.guidance_dir = guidance_dir
    self.spec = spec
    self.compression = compression
    self.prefix = prefix

  def guidance_paths(self, data_paths: Sequence[str]) -> List[str]:
    paths = [os.path.join(self.guidance_dir, os.path.basename(p)) for p in data_paths]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
      raise FileNotFoundError(
          f"guidance shards missing in {self.guidance_dir}: "
          f"{[os.path.basename(p) for p in missing[:5]]} (they must mirror the data shards)")
    return paths

  def join(self, data_paths: Sequence[str], data_compression: str,
           parse: Callable) -> tf.data.Dataset:
    guidance_paths = self.guidance_paths(data_paths)
    pairs = tf.data.Dataset.from_tensor_slices(
        (list(data_paths), guidance_paths))
    data_type = records.tf_compression(data_compression)
    guidance_type = records.tf_compression(self.compression)
    spec, prefix = self.spec, self.prefix

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

    def merge(data_record, guide_record):
      example = parse(data_record)
      guide = tf.io.parse_single_example(guide_record, spec)
      for key, value in guide.items():
        if key != "id":
          example[prefix + key] = value
      return example

    return pairs.flat_map(one_shard).map(merge, num_parallel_calls=tf.data.AUTOTUNE)
