"""What a run needs from TensorFlow besides its model: seeds, determinism and
precision, the distribution strategy, which worker writes the run's files,
each replica's share of the global batch, and the random generators of the
model's layers (checkpointed with it)."""
from typing import Dict

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
import tensorflow as tf
import tf_keras as keras

from kws_tf import config as config_lib


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The distribution strategy called ``name`` (see ``TrainConfig.strategy``)."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    gpus = tf.config.list_logical_devices("GPU")
    devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
    return tf.distribute.MirroredStrategy(devices)
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy()
  raise ValueError(f"unknown strategy {name!r}")


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """Whether this process writes the run's files: True but for the workers
  of a multi-worker cluster other than its chief (the ``chief`` task of
  TF_CONFIG, or worker 0 when there is none)."""
  return strategy.extended.should_checkpoint


def replica_slice(batch: Dict[str, tf.Tensor], context) -> Dict[str, tf.Tensor]:
  """The part of the global batch that replica ``context.replica_id_in_sync_group``
  trains on: the batch axis cut into ``context.num_replicas_in_sync`` equal
  slices (the batch size is a multiple of it, ``check_batch_size``)."""
  size = tf.shape(batch["features"])[0] // context.num_replicas_in_sync
  start = context.replica_id_in_sync_group * size
  return {k: v[start:start + size] for k, v in batch.items()}


def check_batch_size(batch_size: int, strategy: tf.distribute.Strategy) -> None:
  """ValueError naming ``data.batch_size`` when the global batch does not cut
  into equal slices for the strategy's replicas."""
  replicas = strategy.num_replicas_in_sync
  if batch_size % replicas:
    raise ValueError(f"data.batch_size={batch_size} does not divide among the {replicas} "
                     f"replicas of the run; use a multiple of {replicas}")


def random_generators(model: keras.Model) -> Dict[str, tf.random.Generator]:
  """The tf.random.Generator of every random layer (dropout, noise), by layer path.

  tf-keras keeps these generators out of ``model.weights`` and checkpoints;
  the train loop checkpoints them itself so dropout masks continue exactly
  after a resume. Needs ``keras.backend.experimental.enable_tf_random_generator``
  before the model is built.
  """
  found = {}

  def visit(layer, path):
    generator = getattr(getattr(layer, "_random_generator", None), "_generator", None)
    if isinstance(generator, tf.random.Generator):
      found[path] = generator
    for child in getattr(layer, "_self_tracked_trackables", []):
      if isinstance(child, keras.layers.Layer):
        visit(child, f"{path}/{child.name}")

  visit(model, model.name)
  return found


def set_up(train: config_lib.TrainConfig) -> None:
  """Seeds, op determinism and the mixed-precision policy of ``train``, and
  tf.random.Generator-backed random layers (see ``random_generators``)."""
  keras.utils.set_random_seed(train.seed)
  keras.backend.experimental.enable_tf_random_generator()
  if train.deterministic:
    tf.config.experimental.enable_op_determinism()
  keras.mixed_precision.set_global_policy(train.mixed_precision)
