r"""Does waveform augmentation keep up with training? Input pipeline against train step, examples/s.

  .venv/bin/python benchmarks/augmentation.py --data_dir=workdir/records/kws \
      [--config=configs/kws_small_augmented.yaml] [--batches=60]

Not a test. On kws records with raw clips and context, prints one table of
examples per second (median of ``--rounds`` rounds of ``--batches`` batches,
after two warm-up batches):

* the input pipeline alone on the stored features (no waveform augmentation);
* the augmented pipeline alone (``kws_tf.augment`` with the recipe's
  ``augment`` section, enabled), and with each step switched off in turn;
* a train step of the recipe's student alone (forward, cross entropy,
  backward, Adam update, in one tf.function) on one cached batch.

The pipeline must feed at least twice what the train step consumes, so
augmentation never starves training (both share the machine's cores when
training; each is measured alone here).
"""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import dataclasses
import statistics
import time

import tensorflow as tf
import tf_keras as keras
from absl import app, flags

from kws_tf import config as config_lib
from kws_tf import data, records
from kws_tf.models import registry

FLAGS = flags.FLAGS
flags.DEFINE_string("data_dir", "workdir/records/kws", "kws records with raw clips and context.")
flags.DEFINE_string("config", "configs/kws_small_augmented.yaml", "The student recipe.")
flags.DEFINE_integer("batches", 60, "Batches per round.")
flags.DEFINE_integer("rounds", 3, "Rounds per row (the median is printed).")


def rate(make_iterator, batch_size: int) -> float:
  """Median examples/s of ``FLAGS.rounds`` rounds of ``FLAGS.batches`` calls."""
  rates = []
  for _ in range(FLAGS.rounds):
    step = make_iterator()
    step()
    step()
    started = time.perf_counter()
    for _ in range(FLAGS.batches):
      step()
    rates.append(FLAGS.batches * batch_size / (time.perf_counter() - started))
  return statistics.median(rates)


def pipeline_rate(recipe: config_lib.Config, augment: config_lib.AugmentConfig = None) -> float:
  d = recipe.data
  augmenter = (data.make_augmenter(FLAGS.data_dir, augment, d.train_split)
               if augment is not None else None)
  spec_augment = (data.SpecAugment(d.freq_masks, d.freq_mask_param, d.time_masks,
                                   d.time_mask_param) if d.spec_augment else None)

  def make():
    ds = data.make_dataset(FLAGS.data_dir, d.format, d.train_split, d.batch_size,
                           training=True, normalize=d.normalize, spec_augment=spec_augment,
                           shuffle_buffer=d.shuffle_buffer, seed=0, repeat=True,
                           augmenter=augmenter)
    iterator = iter(ds)
    return lambda: next(iterator)

  return rate(make, d.batch_size)


def train_step_rate(recipe: config_lib.Config) -> float:
  d = recipe.data
  metadata = records.load_metadata(FLAGS.data_dir)
  batch = next(iter(data.make_dataset(FLAGS.data_dir, d.format, d.train_split, d.batch_size,
                                      training=True, seed=0, repeat=True)))
  model = registry.build(recipe.model.name, task="kws",
                         num_channels=metadata.formats[d.format].num_channels,
                         num_classes=len(metadata.classes), projection_dim=0,
                         **recipe.model.params)
  optimizer = keras.optimizers.Adam(1e-3)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      logits = model({"features": batch["features"], "num_frames": batch["num_frames"]},
                     training=True)["logits"]
      loss = loss_fn(batch["label"], logits)
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  return rate(lambda: step, d.batch_size)


def main(argv):
  del argv
  recipe = config_lib.load(FLAGS.config)
  augment = dataclasses.replace(recipe.augment, enabled=True)
  rows = [("input pipeline, stored features", pipeline_rate(recipe)),
          ("input pipeline, augmented (recipe's augment section)",
           pipeline_rate(recipe, augment))]
  for step, fields in (("speed", {"speed_prob": 0.0}), ("tempo", {"tempo_prob": 0.0}),
                       ("reverb", {"reverb_prob": 0.0}),
                       ("noise", {"noise_prob": 0.0}), ("telephone", {"telephone_prob": 0.0}),
                       ("shift", {"max_shift_seconds": 0.0})):
    rows.append((f"  augmented without {step}",
                 pipeline_rate(recipe, dataclasses.replace(augment, **fields))))
  step_rate = train_step_rate(recipe)
  rows.append((f"train step alone ({recipe.model.name}, batch {recipe.data.batch_size})",
               step_rate))
  print(f"\n{FLAGS.data_dir}, {FLAGS.config}; examples/s, median of {FLAGS.rounds} rounds "
        f"of {FLAGS.batches} batches\n")
  print("| what | examples/s | vs train step |\n|---|---|---|")
  for name, value in rows:
    print(f"| {name} | {value:,.0f} | {value / step_rate:.2f}x |")


if __name__ == "__main__":
  app.run(main)
