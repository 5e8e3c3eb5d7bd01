r"""Trains a teacher or a student with the one custom train loop.

  kws-train --config=configs/kws_small.yaml --data_dir=workdir/records/kws \
      --model_dir=workdir/models/kws_small --mode=standard

  kws-train --config=configs/kws_small.yaml --data_dir=workdir/records/kws \
      --guidance_dir=workdir/guidance/kws --model_dir=workdir/models/kws_small_kd \
      --mode=distill --override distill.temperature=6 --override distill.alpha=0.8

  kws-train --config=configs/kws_small.yaml --data_dir=workdir/records/kws \
      --hints_dir=workdir/guidance/kws_hints --guidance_dir=workdir/guidance/kws \
      --model_dir=workdir/models/kws_small_fitnet --mode=fitnet

``--mode=fitnet`` runs FitNet stage 1 (hints, in ``<model_dir>/fitnet_stage1``)
and then stage 2 (distillation from it, in ``<model_dir>``), or one of them
with ``--fitnet_stage=1|2``.

The recipe (``--config``) plus ``--override key=value`` pairs plus ``--mode``
and ``--role`` make the resolved config, written to ``<model_dir>/config.yaml``.
Running the same command again resumes from the last checkpoint; a model dir
made with another config, or on records of another data fingerprint, is refused. TensorBoard: ``tensorboard
--logdir=<model_dir>/tensorboard``.
"""
import sys

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from kws_tf import cli

from kws_tf import config as config_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("config", None, "YAML recipe: a path, or a recipe's name (kws_small: "
                    "kws_tf/configs/kws_small.yaml); defaults when unset.")
flags.DEFINE_multi_string("override", [], "key=value overriding the recipe, e.g. "
                          "train.steps=500 or model.params.head_dropout=0.1; repeatable.")
flags.DEFINE_enum("mode", None, list(config_lib.MODES),
                  "Training mode; overrides the recipe's `mode`.")
flags.DEFINE_enum("role", None, list(config_lib.ROLES),
                  "teacher or student; overrides the recipe's `role`.")
flags.DEFINE_string("model_dir", None, "Where checkpoints, summaries and results go.")
flags.DEFINE_string("data_dir", None, "A create_tfrecords output folder (kws or ctc).")
flags.DEFINE_string("guidance_dir", None, "A create_guidance --guidance=logits output folder "
                    "(modes distill, quantized_distill, fitnet stage 2).")
flags.DEFINE_string("hints_dir", None, "A create_guidance --guidance=hints output folder "
                    "(mode=fitnet, stage 1).")
flags.DEFINE_integer("fitnet_stage", None, "mode=fitnet: 1 (hints only) or 2 (distillation "
                     "from a finished stage 1 only); both when unset (overrides fitnet.stage).")
flags.DEFINE_string("init_from", None, "A finished kws-train model dir of the same model whose "
                    "best weights a fresh run starts from (fine-tuning; e.g. "
                    "--mode=quantized_distill from the float distilled student, or a teacher "
                    "with more blocks trained: model.params.trainable_blocks and the dropout "
                    "rates may differ). Not for mode=fitnet, whose stage 2 starts from its "
                    "own stage 1.")
flags.DEFINE_integer("cpu_replicas", 0, "Split the CPU into this many logical devices, "
                     "so train.strategy=mirrored runs several replicas without GPUs "
                     "(to exercise multi-replica code on a CPU machine); 0 leaves it whole.")
flags.mark_flags_as_required(["model_dir", "data_dir"])


def resolved_config() -> config_lib.Config:
  """The recipe with overrides, --mode and --role applied."""
  overrides = list(FLAGS.override)
  if FLAGS.mode:
    overrides.append(f"mode={FLAGS.mode}")
  if FLAGS.role:
    overrides.append(f"role={FLAGS.role}")
  if FLAGS.fitnet_stage is not None:
    overrides.append(f"fitnet.stage={FLAGS.fitnet_stage}")
  return config_lib.load(FLAGS.config, overrides)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.cpu_replicas > 1:
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * FLAGS.cpu_replicas)
  from kws_tf.training import fitnet_stages, loop
  try:
    config = resolved_config()
    if config.mode == "fitnet":
      if FLAGS.init_from:
        raise config_lib.ConfigError("--init_from is not for mode=fitnet (stage 2 starts "
                                     "from its own stage 1)")
      results = fitnet_stages.train(config, FLAGS.model_dir, FLAGS.data_dir, FLAGS.guidance_dir,
                                    FLAGS.hints_dir)
    else:
      results = loop.Trainer(config, FLAGS.model_dir, FLAGS.data_dir, FLAGS.guidance_dir,
                             init_from=FLAGS.init_from).run()
  except (config_lib.ConfigError, loop.TrainingError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  test = results.get("test")
  if test:
    shown = ", ".join(f"{k} {v:.4f}" for k, v in test.items() if isinstance(v, float))
    print(f"{results['test_split']} ({results['model']}, best step {results['best_step']}): {shown}")
  print(f"results: {FLAGS.model_dir}/results.json")
  return 0


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
