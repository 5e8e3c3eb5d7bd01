r"""Writes a trained teacher's guidance (logits or hidden-layer hints) next to the data.

  kws-create-guidance --teacher_dir=workdir/models/teacher_kws \
      --data_dir=workdir/records/kws --out_dir=workdir/guidance/kws --guidance=logits

Output shards mirror the data shards one to one: the same file names, the
same example ids in the same order, so ``kws_tf.data`` joins them record by
record. Each record holds:

  id          bytes   the data record's id
  frames      int64   valid frames of the time-shaped outputs (one every
                      ``frame_seconds``, 20 ms for a 10 ms front-end hop)
  logits      bytes   (--guidance=logits) raw teacher logits, no temperature:
                      kws ``[classes]``, ctc ``[frames, vocabulary]``
  features    bytes   (--guidance=logits, --features) the teacher's feature
                      layer (its ``projection``): kws ``[d]`` (with
                      ``--views=K``: ``[K, d]``, one per view), ctc ``[frames, d]``
                      (not with ``--views``)
  hint        bytes   (--guidance=hints) encoder hidden state of layer
                      ``--up_to`` (0 = embeddings): ``[frames, d_model]``
  hint_pooled bytes   (--guidance=hints, kws) its mean over the valid frames ``[d_model]``

With ``--views=K`` (logits) the record holds the teacher's logits for K
augmented views of its example, made from the raw records with the
``augment`` section of ``--augment_recipe`` and the seed
``kws_tf.augment.view_seed(id, view, --view_seed)``: kws, ``logits`` is
``[K, classes]`` (windows of the clip with context); ctc, ``frames`` is
``[K]`` and ``logits`` ``[sum of frames, vocabulary]``, the views one after
another (the whole utterance, ``kws_tf.utterance_augment``). A student
trained with that recipe draws one view per example and step and sees
exactly the audio the teacher heard ("a good teacher is patient and
consistent", Beyer et al. 2022). ``--extend=<guidance of fewer views>`` adds
views to guidance made before: its views are copied, the others computed.

``--ensemble=<teacher dir>,...`` makes one teacher of several that read the
same input: ``logits`` is then the log of the mean of their class
probabilities (frame by frame for ctc), the ensemble's prediction, which a
distilled student takes at its temperature like any teacher's logits.

Values are little-endian ``--dtype`` (float32 or float16). ``metadata.json``
records the kind, layer, dtype, shapes, ``frame_seconds`` (the teacher's
``ModelSpec.output_frame_seconds``: its feature hop times its encoder's time
stride; a ctc student distilled from the logits must have the same, FitNet
aligns whole-number ratios), the teacher fingerprint
(hash of its config and weights) and the data fingerprint, which the joiner
checks. Within a shard, examples run in batches of similar length; shards are
written under temporary names and renamed when complete, so a killed run is
finished by the same command.

This process runs the teacher over the shards one after another
(``--runner=local``), or an Apache Beam pipeline does, one element per shard
and a teacher per worker (``--runner=beam``, ``data_prep.beam_guidance``);
both write the same bytes. A data shard that cannot be read or a guidance
shard that cannot be written ends the run with ``error: <file>: <reason>``
(the Beam runner first writes every other shard).
"""
import sys

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from data_prep import beam_options
from kws_tf import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("teacher_dir", None, "A teacher model dir written by kws-train "
                    "(--role=teacher).")
flags.DEFINE_string("data_dir", None, "The create_tfrecords output to write guidance for.")
flags.DEFINE_string("out_dir", None, "Output folder (guidance shards + metadata.json).")
flags.DEFINE_enum("guidance", "logits", ["logits", "hints"], "What to write.")
flags.DEFINE_integer("up_to", -1, "Hint layer: 0 is the encoder's embeddings, i the "
                     "output of block i; -1 the last (after the final layer norm).")
flags.DEFINE_boolean("features", True, "With --guidance=logits, also write the "
                     "teacher's feature layer (for feature distillation; kws: for each view "
                     "with --views, ctc: not with --views).")
flags.DEFINE_list("splits", [], "Splits to write (default: every split of the data).")
flags.DEFINE_integer("batch_size", 32, "Examples per teacher batch.")
flags.DEFINE_enum("dtype", "float16", ["float32", "float16"], "Stored value type.")
flags.DEFINE_string("checkpoint", "best", "Teacher weights: best, last or a checkpoint path.")
flags.DEFINE_integer("views", 0, "Logits: the teacher's logits for this many augmented "
                     "views of every clip or utterance (0: the stored clean one). The student "
                     "trained with the same augment section then sees exactly these views.")
flags.DEFINE_string("augment_recipe", None, "With --views: the student's recipe (YAML) "
                    "whose augment section makes the views.")
flags.DEFINE_multi_string("override", [], "With --views: key=value overrides of the "
                          "recipe, as kws-train takes them.")
flags.DEFINE_integer("view_seed", 0, "With --views: seed of the views.")
flags.DEFINE_string("extend", "", "With --views=K: a finished guidance folder of fewer "
                    "views made the same way (teacher, data, augment section, view seed); its "
                    "views are copied to --out_dir and only the others computed.")
flags.DEFINE_list("ensemble", [], "More teacher dirs of the same input and outputs: the "
                  "stored logits are the log of the mean of all the teachers' class "
                  "probabilities (an ensemble teacher; logits only, with --nofeatures).")
flags.DEFINE_enum("runner", "local", ["local", "beam"], "local: this process runs the "
                  "teacher over the shards one after another; beam: an Apache Beam "
                  "pipeline of the same shards, the teacher loaded once per worker "
                  "(apache-beam, the beam extra), run by the runner of "
                  "--beam_pipeline_options. Same shards, same bytes.")
flags.adopt_module_key_flags(beam_options)  # --beam_pipeline_options
flags.mark_flags_as_required(["teacher_dir", "data_dir", "out_dir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.runner == "beam":
    beam_options.check_installed()
  from data_prep import guidance, shard_worker
  from kws_tf import config as config_lib
  try:
    recipe = None
    if FLAGS.views:
      if not FLAGS.augment_recipe:
        raise ValueError("--views needs --augment_recipe (the student's recipe)")
      recipe = config_lib.load(FLAGS.augment_recipe, FLAGS.override)
    meta = guidance.create_guidance(
        FLAGS.teacher_dir, FLAGS.data_dir, FLAGS.out_dir, FLAGS.guidance, FLAGS.up_to,
        FLAGS.features, FLAGS.splits, FLAGS.batch_size, FLAGS.dtype, FLAGS.checkpoint,
        views=FLAGS.views, augment_config=recipe.augment if recipe else None,
        view_seed=FLAGS.view_seed,
        babble_split=recipe.data.train_split if recipe else "train", runner=FLAGS.runner,
        beam_pipeline_options=FLAGS.beam_pipeline_options, extend=FLAGS.extend,
        ensemble=FLAGS.ensemble)
  except (ValueError, config_lib.ConfigError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  except (OSError, shard_worker.ShardError) as e:  # a file missing, unreadable or unwritable
    print(f"error: {shard_worker.failure_message(e)}", file=sys.stderr)
    return 2
  print(f"guidance ({meta['kind']}, {', '.join(meta['outputs'])}) written to {FLAGS.out_dir}")
  return 0


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
