r"""CTC students against their teacher over seeds: standard, distilled, quantized-distilled.

  .venv/bin/python benchmarks/ctc_distill.py --records=<ctc records with mfcc and raw> \
      --test_sets=<name>=<ctc records of speech no model trained on>[,...] \
      --teacher_dir=<a ctc teacher model dir> [--guidance_dir=<its logits>] \
      [--seeds=0,1,2] [--methods=standard,distill,quantized_distill] [--views=4] \
      [--student_config=ctc_small] [--student_override=key=value] \
      [--work_dir=/tmp/kws_tf_ctc_distill] [--lm=workdir/lm/vietnamese_3gram.arpa]

Not a test. Stages (``kws_tf.stages``: stamped, skipped while program, options
and inputs are unchanged; a killed training resumes):

1. guidance  ``kws-create-guidance`` of ``--teacher_dir`` on the records' train
             split, unless ``--guidance_dir`` gives them: the teacher's logits
             for the clean utterances, or with ``--views=K`` for K augmented
             views of each (the augment section of the students' recipe and
             ``--student_override``, e.g. ``augment.enabled=true``)
2. students  for each of ``--seeds`` and ``--methods``: ``kws-train
             --config=<--student_config> --mode=<method> --override
             train.seed=<seed>``, the same recipe and steps for every method
3. export    ``kws-export-tflite --formats=int8`` of each student

Then the teacher (its Keras model on its own feature format) and every
student's int8 file (on the records' raw audio, as ``kws-infer`` reads it) run
over the test sets: the records' ``--split`` (speakers held out of training)
and the ``test`` split of each of ``--test_sets`` (for instance ctc records of
the robustness set's utterances, clean and under conditions: voices, rates
and sentences no training corpus uses). Each is decoded greedily and with ``beam_lm`` and the word LM
(``--lm_weight``, ``--word_bonus``, beam width 8; fixed, not tuned here). One
Markdown row per model with CER and WER, then the mean and spread per method;
and the teacher's CER as a share of the standard students' mean (the target of
the CTC issue: at most 0.7). With ``--conditions=<name>=<utterances.jsonl>``,
also each model's greedy CER per condition of that test set (clean, noise,
reverberation, telephone, ...: the robustness set's utterances).
"""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import json
import os
import shlex
import sys
from typing import Dict, List, Optional

import numpy as np
from absl import app, flags

from kws_tf import config as config_lib
from kws_tf.evaluation import ctc_logits, decoding, metrics
from kws_tf.stages import Runner, Stage

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHODS = ("standard", "distill", "quantized_distill")
BEAM_WIDTH = 8
TARGET_TEACHER_SHARE = 0.7

FLAGS = flags.FLAGS
flags.DEFINE_string("records", None, "ctc records (kws-create-tfrecords --task=ctc) with the "
                    "students' format and raw audio; the teacher's format too.")
flags.DEFINE_string("split", "test", "The records' test split.")
flags.DEFINE_list("test_sets", [], "More test sets, name=<ctc records> (their test split).")
flags.DEFINE_string("teacher_dir", None, "A trained ctc teacher (kws-train --role=teacher).")
flags.DEFINE_string("guidance_dir", None, "The teacher's logits on the records' train split "
                    "(kws-create-guidance); made in --work_dir when unset.")
flags.DEFINE_string("student_config", "ctc_small", "The students' recipe.")
flags.DEFINE_integer("views", 0, "Guidance of this many augmented views per utterance, made "
                     "with the students' augment section (set augment.enabled=true in "
                     "--student_override); 0: of the clean utterances.")
flags.DEFINE_multi_string("student_override", [], "key=value for every student run.")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds: each trains every method.")
flags.DEFINE_list("methods", list(METHODS), f"Training modes, of {METHODS}.")
flags.DEFINE_string("work_dir", "/tmp/kws_tf_ctc_distill", "Guidance, students, exports, stamps.")
flags.DEFINE_string("lm", "workdir/lm/vietnamese_3gram.arpa", "The word LM (ARPA or KenLM "
                    "binary); made with kws-build-lm when missing.")
flags.DEFINE_float("lm_weight", 1.0, "beam_lm: LM weight.")
flags.DEFINE_float("word_bonus", 1.0, "beam_lm: word bonus (nats).")
flags.DEFINE_list("conditions", [], "name=<utterances.jsonl> (kws-make-robustness-set's): "
                  "also the greedy CER of each condition of that test set.")
flags.DEFINE_integer("limit", 0, "Decode at most this many utterances per set (0: all).")
flags.mark_flags_as_required(["records", "teacher_dir"])


def _guidance(runner: Runner) -> str:
  if FLAGS.guidance_dir:
    return FLAGS.guidance_dir
  out = os.path.join(FLAGS.work_dir, "guidance")
  views = []
  if FLAGS.views:
    out = os.path.join(FLAGS.work_dir, f"guidance_views{FLAGS.views}")
    views = [f"--views={FLAGS.views}",
             f"--augment_recipe={config_lib.find_recipe(FLAGS.student_config)}"]
    views += [f"--override={o}" for o in FLAGS.student_override]
  runner.run(Stage("guidance", "data_prep.create_guidance",
                   [f"--teacher_dir={FLAGS.teacher_dir}", f"--data_dir={FLAGS.records}",
                    f"--out_dir={out}", "--splits=train", "--nofeatures"] + views,
                   inputs=[FLAGS.teacher_dir, FLAGS.records], outputs=[out],
                   done=[os.path.join(out, "metadata.json")], resumable=True,
                   key=f"guidance_views{FLAGS.views}" if FLAGS.views else None))
  return out


def _student(runner: Runner, method: str, seed: str, guidance: str) -> str:
  """Trains and exports one student (or reads them back); returns its int8 file."""
  name = f"{method}_s{seed}"
  model_dir = os.path.join(FLAGS.work_dir, "models", name)
  options = [f"--config={FLAGS.student_config}", f"--mode={method}",
             f"--data_dir={FLAGS.records}", f"--model_dir={model_dir}"]
  options += [f"--override={o}" for o in FLAGS.student_override + [f"train.seed={seed}"]]
  inputs = [FLAGS.records, config_lib.find_recipe(FLAGS.student_config)]
  if method != "standard":
    options.append(f"--guidance_dir={guidance}")
    inputs.append(guidance)
  train = Stage(f"student ({method}, seed {seed})", "kws_tf.bin.train", options, inputs=inputs,
                outputs=[model_dir], done=[os.path.join(model_dir, "results.json")],
                resumable=True, key=f"train_{name}", adopt=True)
  runner.run(train)
  out = os.path.join(FLAGS.work_dir, "export", name)
  export = Stage(f"int8 file ({method}, seed {seed})", "kws_tf.bin.export_tflite",
                 [f"--model_dir={model_dir}", f"--data_dir={FLAGS.records}", f"--out_dir={out}",
                  "--formats=int8"], inputs=[train], outputs=[out],
                 done=[os.path.join(out, "model_int8.tflite")], key=f"export_{name}")
  runner.run(export)
  return export.done_files[0]


def _rates(logits_labels_vocabulary, lm: decoding.LanguageModel,
           groups: Optional[List[str]] = None) -> Dict[str, float]:
  """CER and WER of greedy and LM decoding; with ``groups`` (each utterance's
  condition), also the greedy CER of each condition, ``cer_<condition>``."""
  logits, labels, vocabulary = logits_labels_vocabulary
  references = [vocabulary.decode(ids) for ids in labels]
  out = {}
  for key, decoder in (("greedy", decoding.CtcDecoder("greedy")),
                       ("lm", decoding.CtcDecoder("beam_lm", BEAM_WIDTH, lm, FLAGS.lm_weight,
                                                  FLAGS.word_bonus))):
    hypotheses = [vocabulary.decode(decoder.decode(row[np.newaxis], [len(row)], vocabulary)[0])
                  for row in logits]
    rates = metrics.error_rates(references, hypotheses)
    out[f"{key}_cer"], out[f"{key}_wer"] = rates["cer"], rates["wer"]
    if key == "greedy" and groups:
      for group in sorted(set(groups)):
        chosen = [i for i, g in enumerate(groups) if g == group]
        out[f"cer_{group}"] = metrics.error_rates([references[i] for i in chosen],
                                                  [hypotheses[i] for i in chosen])["cer"]
  return out


def _groups(path: str, records_dir: str, split: str) -> List[str]:
  """The condition of every utterance of the records' ``split``, in record order, from
  ``path`` (JSON lines with ``id`` and ``condition``: ``kws-make-robustness-set``'s
  ``utterances.jsonl``). UsageError naming the first utterance it does not list."""
  condition = {}
  with open(path) as f:
    for line in f:
      if line.strip():
        row = json.loads(line)
        condition[row["id"]] = row["condition"]
  ids = ctc_logits.record_ids(records_dir, split, FLAGS.limit)
  missing = [i for i in ids if i not in condition]
  if missing:
    raise app.UsageError(f"{path} has no condition for utterance {missing[0]!r} of "
                         f"{records_dir}")
  return [condition[i] for i in ids]


def _sets() -> List[tuple]:
  """(name, records dir, split) of every test set."""
  sets = [("test", FLAGS.records, FLAGS.split)]
  for item in FLAGS.test_sets:
    name, _, records_dir = item.partition("=")
    if not name or not records_dir:
      raise app.UsageError(f"--test_sets takes name=<records dir>, got {item!r}")
    sets.append((name, records_dir, "test"))
  return sets


def _cells(scores: Dict[str, Dict[str, float]]) -> str:
  return " | ".join(f"{scores[name]['greedy_cer']:.4f} / {scores[name]['lm_cer']:.4f} / "
                    f"{scores[name]['lm_wer']:.4f}" for name, _, _ in _sets())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  unknown = sorted(set(FLAGS.methods) - set(METHODS))
  if unknown:
    raise app.UsageError(f"unknown --methods {unknown}; expected some of {METHODS}")
  if not os.path.exists(FLAGS.lm):
    Runner(os.path.join(FLAGS.work_dir, "stamps"), cwd=REPO).run(
        Stage("language model", "data_prep.build_lm", [f"--output={FLAGS.lm}"],
              outputs=[FLAGS.lm]))
  conditions = dict(item.partition("=")[::2] for item in FLAGS.conditions)
  names = [name for name, _, _ in _sets()]
  for name, path in conditions.items():
    if name not in names or not os.path.isfile(path):
      raise app.UsageError(f"--conditions takes name=<utterances.jsonl>, a name of "
                           f"{names} and an existing file; got {name}={path}")
  command = " ".join(shlex.quote(c) for c in [sys.executable] + sys.argv)
  runner = Runner(os.path.join(FLAGS.work_dir, "stamps"), cwd=REPO)
  guidance = _guidance(runner) if set(FLAGS.methods) - {"standard"} else ""
  files = {(m, s): _student(runner, m, s, guidance) for s in FLAGS.seeds for m in FLAGS.methods}

  lm = decoding.LanguageModel(FLAGS.lm)
  groups = {name: _groups(conditions[name], records_dir, split) if name in conditions else None
            for name, records_dir, split in _sets()}
  teacher = {name: _rates(ctc_logits.model_dir_logits(FLAGS.teacher_dir, records_dir, split,
                                                      FLAGS.limit), lm, groups[name])
             for name, records_dir, split in _sets()}
  students = {key: {name: _rates(ctc_logits.exported_logits(path, records_dir, split,
                                                            FLAGS.limit), lm, groups[name])
                    for name, records_dir, split in _sets()}
              for key, path in files.items()}

  print(f"\ncommand: {command}")
  print("test sets: " + "; ".join(f"{name}: {d} ({split})" for name, d, split in _sets()) +
        f". beam_lm: width {BEAM_WIDTH}, LM {FLAGS.lm}, lm_weight {FLAGS.lm_weight:g}, "
        f"word_bonus {FLAGS.word_bonus:g}\n")
  print("| model | seed | " + " | ".join(f"{name}: CER greedy / CER LM / WER LM"
                                          for name, _, _ in _sets()) + " |")
  print("|---|---|" + "---|" * len(_sets()))
  print(f"| teacher (Keras, float32) | - | {_cells(teacher)} |")
  for (method, seed), scores in students.items():
    print(f"| {method} (int8) | {seed} | {_cells(scores)} |")
  print("\n| method (int8) | seeds | " + " | ".join(
      f"{name}: CER greedy, CER LM (mean +- sd)" for name, _, _ in _sets()) + " |")
  print("|---|---|" + "---|" * len(_sets()))
  means = {}
  for method in FLAGS.methods:
    cells = []
    for name, _, _ in _sets():
      greedy = [students[(method, s)][name]["greedy_cer"] for s in FLAGS.seeds]
      lm = [students[(method, s)][name]["lm_cer"] for s in FLAGS.seeds]
      means[(method, name)] = float(np.mean(greedy))
      cells.append(f"{np.mean(greedy):.4f} +- {np.std(greedy):.4f}, "
                   f"{np.mean(lm):.4f} +- {np.std(lm):.4f}")
    print(f"| {method} | {len(FLAGS.seeds)} | " + " | ".join(cells) + " |")
  for name in conditions:
    kinds = sorted(set(groups[name]))
    print(f"\n{name}, greedy CER by condition (utterances):\n")
    print("| model | seed | " + " | ".join(f"{k} ({groups[name].count(k)})" for k in kinds) +
          " |")
    print("|---|---|" + "---|" * len(kinds))
    rows = [("teacher (Keras, float32)", "-", teacher[name])]
    rows += [(f"{method} (int8)", seed, scores[name])
             for (method, seed), scores in students.items()]
    for model, seed, scores in rows:
      print(f"| {model} | {seed} | " + " | ".join(f"{scores['cer_' + k]:.4f}" for k in kinds) +
            " |")
  if "standard" in FLAGS.methods:
    print()
    for name, _, _ in _sets():
      share = teacher[name]["greedy_cer"] / means[("standard", name)]
      print(f"{name}: teacher greedy CER {teacher[name]['greedy_cer']:.4f} = {share:.2f}x the "
            f"standard students' mean (target <= {TARGET_TEACHER_SHARE}: "
            f"{'met' if share <= TARGET_TEACHER_SHARE else 'missed'})")


if __name__ == "__main__":
  app.run(main)
