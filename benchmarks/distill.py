r"""Distillation benchmark on the synthetic corpus: teacher, standard student, distilled student.

  .venv/bin/python benchmarks/distill.py [--work_dir=/tmp/kws_tf_distill]

Not a test. Every number it prints is on **synthetic** espeak-ng speech. Stages,
each a separate program (the commands are printed), each skipped when its
output already exists, so a re-run only redoes what changed:

1. corpus   ``data_prep.synthesize_corpus``: ``--speakers`` voices, of which
            ``--dev_speakers`` + ``--test_speakers`` are held out of training;
            a symlink view splits the held-out ones into ``dev`` (validation:
            early stopping, best checkpoint, every tuning decision) and
            ``test`` (only reported; voices seen nowhere else)
2. records  ``data_prep.create_tfrecords --task=kws --formats=logmel,mfcc``
3. teacher  ``kws_tf.bin.train --config=configs/teacher_kws.yaml`` (the
            Whisper-architecture teacher, trained from scratch on log-mel)
4. guidance ``data_prep.create_guidance --splits=train`` (the teacher's logits
            and feature layer on the train clips)
5. students ``kws_tf.bin.train --config=configs/kws_small.yaml`` with
            ``--mode=standard`` and ``--mode=distill``, for each of ``--seeds``:
            same recipe, steps and seed; only the loss differs.

Every run gets ``--override data.validation_split=dev``. Model and guidance
folders are named after a hash of everything that makes them (recipe,
overrides, data), so changing a recipe or an ``--*_override`` trains anew while
an unchanged one is read back from its ``results.json``.

The table gives each model's parameters (all weights, batch-norm statistics
and the teacher's fixed position embeddings included), float32 size, test and
dev accuracy, test macro-F1 and training examples/s, then the distilled
student's mean test accuracy over the seeds as a share of the teacher's and its
parameter ratio, against the target: a student with at most 1/20 of the
teacher's parameters that reaches at least 97% of the teacher's accuracy and
beats the same student trained without the teacher.
"""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import hashlib
import json
import os
import shlex
import subprocess
import sys
import time
from typing import List, Optional

import yaml
from absl import app, flags

from kws_tf import config as config_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_string("work_dir", "/tmp/kws_tf_distill", "Corpus, records, models and guidance "
                    "(kept and reused by later runs).")
flags.DEFINE_integer("speakers", 24, "Synthetic speakers: train, dev and test together.")
flags.DEFINE_integer("dev_speakers", 4, "Of which held out as the dev split (validation: early "
                     "stopping, best checkpoint, tuning).")
flags.DEFINE_integer("test_speakers", 4, "Of which held out as the test split (reported only).")
flags.DEFINE_integer("utterances_per_speaker", 80, "Utterances per synthetic speaker.")
flags.DEFINE_integer("corpus_seed", 0, "Seed of the synthetic corpus.")
flags.DEFINE_integer("cores", os.cpu_count(), "Worker processes of the data stages.")
flags.DEFINE_string("teacher_config", os.path.join(REPO, "configs", "teacher_kws.yaml"),
                    "The teacher's recipe.")
flags.DEFINE_string("student_config", os.path.join(REPO, "configs", "kws_small.yaml"),
                    "The student's recipe (trained with --mode=standard and --mode=distill).")
flags.DEFINE_multi_string("teacher_override", [], "key=value for the teacher's recipe.")
flags.DEFINE_multi_string("student_override", [], "key=value for both student runs.")
flags.DEFINE_multi_string("distill_override", [], "key=value for the distilled run only "
                          "(distill.* settings; anything else would make the runs unequal).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of the students: each seed trains "
                  "the standard and the distilled student; the target is judged on the means.")
flags.DEFINE_enum("until", "students", ["records", "teacher", "guidance", "students"],
                  "Last stage to run.")

# Every run validates on the dev speakers (the recipes' default is a hold-out
# of train clips, whose speakers are also in training).
BENCHMARK_OVERRIDES = ["data.validation_split=dev"]
TARGET_RATIO = 20          # the student has at most 1/20 of the teacher's parameters
TARGET_SHARE = 0.97        # and at least 97% of its test accuracy


def _quote(command: List[str]) -> str:
  return " ".join(shlex.quote(c) for c in command)


def _run(name: str, command: List[str], timings: dict) -> None:
  print(f"== {name}: {_quote(command)}", flush=True)
  started = time.time()
  result = subprocess.run(command, cwd=REPO)
  if result.returncode != 0:
    raise SystemExit(f"stage {name} failed (exit {result.returncode}); fix the cause and run "
                     "the same command again: finished stages are kept")
  timings[name] = time.time() - started
  print(f"== {name}: done in {timings[name]:.0f} s", flush=True)


def split_view(corpus: str, view: str, dev_speakers: int) -> None:
  """A VIVOS-layout view of ``corpus`` with three splits, made of symlinks.

  ``train`` is the corpus' train split; its held-out (``test``) speakers are
  divided: the first ``dev_speakers`` (sorted by id) become ``dev``, the rest
  ``test``. prompts.txt, genders.txt and alignments.ctm are filtered per split.
  """
  if os.path.exists(os.path.join(view, ".complete")):
    return
  os.makedirs(view, exist_ok=True)
  train = os.path.join(view, "train")
  if not os.path.lexists(train):
    os.symlink(os.path.join(os.path.abspath(corpus), "train"), train)
  held_out = os.path.join(os.path.abspath(corpus), "test")
  speakers = sorted(os.listdir(os.path.join(held_out, "waves")))
  if not 0 < dev_speakers < len(speakers):
    raise SystemExit(f"--dev_speakers={dev_speakers}: the corpus holds out {len(speakers)} speakers")
  for split, chosen in (("dev", speakers[:dev_speakers]), ("test", speakers[dev_speakers:])):
    folder = os.path.join(view, split)
    os.makedirs(os.path.join(folder, "waves"), exist_ok=True)
    for speaker in chosen:
      link = os.path.join(folder, "waves", speaker)
      if not os.path.lexists(link):
        os.symlink(os.path.join(held_out, "waves", speaker), link)
    for name in ("prompts.txt", "genders.txt", "alignments.ctm"):
      with open(os.path.join(held_out, name), encoding="utf-8") as f:
        lines = [line for line in f
                 if line.split(maxsplit=1)[0].rsplit("_", 1)[0] in chosen
                 or line.split(maxsplit=1)[0] in chosen]
      with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
        f.writelines(lines)
  open(os.path.join(view, ".complete"), "w").close()


def _digest(*parts) -> str:
  text = json.dumps(parts, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:10]


def _resolved(path: str, overrides: List[str], mode: Optional[str] = None) -> str:
  """The resolved recipe as YAML (what the train binary writes to config.yaml)."""
  overrides = list(overrides) + ([f"mode={mode}"] if mode else [])
  return config_lib.dump(config_lib.load(path, overrides))


def _train(name: str, config: str, overrides: List[str], mode: str, data_dir: str,
           model_dir: str, timings: dict, guidance_dir: Optional[str] = None) -> dict:
  results_path = os.path.join(model_dir, "results.json")
  command = [sys.executable, "-m", "kws_tf.bin.train", f"--config={config}",
             f"--mode={mode}", f"--data_dir={data_dir}", f"--model_dir={model_dir}"]
  command += [f"--override={o}" for o in overrides]
  if guidance_dir:
    command.append(f"--guidance_dir={guidance_dir}")
  if os.path.exists(results_path):
    print(f"== {name}: reusing {results_path} (made by: {_quote(command)})", flush=True)
  else:
    _run(name, command, timings)
  with open(results_path, encoding="utf-8") as f:
    return json.load(f)


def _validation_accuracy(model_dir: str) -> Optional[float]:
  path = os.path.join(model_dir, "best", "best.json")
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)["metrics"].get("accuracy")


def _row(model: str, role: str, seed: str, results: dict, model_dir: str) -> List[str]:
  test = results["test"]
  params = results["parameters"]
  rate = results.get("train_examples_per_second")
  validation = _validation_accuracy(model_dir)
  return [model, role, seed, f"{params:,}", f"{params * 4 / 1e6:.2f}", f"{test['accuracy']:.4f}",
          f"{test['macro_f1']:.4f}", "n/a" if validation is None else f"{validation:.4f}",
          f"{results['steps']} (best {results['best_step']})",
          "n/a" if rate is None else f"{rate:,.0f}"]


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  started = time.time()
  command = _quote([sys.executable] + sys.argv)
  print(f"command: {command}", flush=True)
  timings = {}

  # 1-2. Corpus and records, in folders named after the corpus flags.
  held_out = FLAGS.dev_speakers + FLAGS.test_speakers
  corpus_key = (f"s{FLAGS.speakers}-d{FLAGS.dev_speakers}-t{FLAGS.test_speakers}"
                f"-u{FLAGS.utterances_per_speaker}-seed{FLAGS.corpus_seed}")
  corpus = os.path.join(FLAGS.work_dir, f"corpus-{corpus_key}")
  data_dir = os.path.join(FLAGS.work_dir, f"records-{corpus_key}", "kws")
  # Always run: synthesize_corpus skips the speakers it has finished, and its
  # synthesis.json is written before any speaker, so it does not mark a complete corpus.
  _run("corpus", [sys.executable, "-m", "data_prep.synthesize_corpus", f"--out_dir={corpus}",
                  f"--speakers={FLAGS.speakers}", f"--test_speakers={held_out}",
                  f"--utterances_per_speaker={FLAGS.utterances_per_speaker}",
                  f"--seed={FLAGS.corpus_seed}", f"--cores={FLAGS.cores}"], timings)
  view = os.path.join(FLAGS.work_dir, f"splits-{corpus_key}")
  split_view(corpus, view, FLAGS.dev_speakers)
  if os.path.exists(os.path.join(data_dir, "metadata.json")):
    print(f"== records: reusing {data_dir}", flush=True)
  else:
    _run("records", [sys.executable, "-m", "data_prep.create_tfrecords", f"--data_dir={view}",
                     "--corpus=vivos", f"--out_dir={data_dir}", "--splits=train,dev,test",
                     "--formats=logmel,mfcc", "--task=kws", f"--cores={FLAGS.cores}",
                     f"--alignments={os.path.join(view, '*', 'alignments.ctm')}"], timings)
  with open(os.path.join(data_dir, "metadata.json"), encoding="utf-8") as f:
    metadata = json.load(f)
  if FLAGS.until == "records":
    return

  # 3. Teacher.
  teacher_overrides = BENCHMARK_OVERRIDES + FLAGS.teacher_override
  teacher_yaml = _resolved(FLAGS.teacher_config, teacher_overrides)
  teacher_dir = os.path.join(FLAGS.work_dir, "models",
                             f"teacher-{_digest(teacher_yaml, metadata['fingerprint'])}")
  teacher = _train("teacher", FLAGS.teacher_config, teacher_overrides, "standard",
                   data_dir, teacher_dir, timings)
  if FLAGS.until == "teacher":
    return

  # 4. Guidance: the teacher's logits and feature layer for every split.
  guidance_dir = os.path.join(FLAGS.work_dir, "guidance",
                              f"{os.path.basename(teacher_dir)}-best-{teacher['best_step']}")
  if os.path.exists(os.path.join(guidance_dir, "metadata.json")):
    print(f"== guidance: reusing {guidance_dir}", flush=True)
  else:
    _run("guidance", [sys.executable, "-m", "data_prep.create_guidance",
                      f"--teacher_dir={teacher_dir}", f"--data_dir={data_dir}",
                      f"--out_dir={guidance_dir}", "--guidance=logits", "--splits=train"],
         timings)
  if FLAGS.until == "guidance":
    return

  # 5. The same student, standard and distilled, once per seed.
  runs = {"standard": [], "distill": []}
  for seed in FLAGS.seeds:
    for mode in ("standard", "distill"):
      overrides = BENCHMARK_OVERRIDES + FLAGS.student_override + [f"train.seed={seed}"]
      if mode == "distill":
        overrides += FLAGS.distill_override
      resolved = _resolved(FLAGS.student_config, overrides, mode)
      key = (resolved, metadata["fingerprint"]) + ((guidance_dir,) if mode == "distill" else ())
      model_dir = os.path.join(FLAGS.work_dir, "models", f"student_{mode}-{_digest(*key)}")
      results = _train(f"student ({mode}, seed {seed})", FLAGS.student_config, overrides, mode,
                       data_dir, model_dir, timings, guidance_dir if mode == "distill" else None)
      runs[mode].append((seed, results, model_dir, yaml.safe_load(resolved)))

  # The tables.
  total = time.time() - started
  student_cfg = runs["distill"][0][3]
  d = student_cfg["distill"]
  hard = d["beta"] if d["beta"] is not None else 1 - d["alpha"]
  header = ["model", "role / mode", "seed", "parameters", "size (MB, float32)",
            "test accuracy (synthetic)", "test macro-F1 (synthetic)",
            "dev accuracy (synthetic)", "steps (best)", "train examples/s"]
  rows = [_row(teacher["model"], "teacher", "", teacher, teacher_dir)]
  for mode in ("standard", "distill"):
    for seed, results, model_dir, _ in runs[mode]:
      rows.append(_row(results["model"], f"student / {mode}", str(seed), results, model_dir))
  means = {}
  for mode in ("standard", "distill"):
    values = [(r["test"]["accuracy"], r["test"]["macro_f1"], _validation_accuracy(m) or 0.0)
              for _, r, m, _ in runs[mode]]
    means[mode] = [sum(v[i] for v in values) / len(values) for i in range(3)]
    if len(values) > 1:
      spread = [f"{min(v[i] for v in values):.4f}-{max(v[i] for v in values):.4f}"
                for i in range(3)]
      first = runs[mode][0][1]
      rows.append([first["model"], f"student / {mode}", f"mean of {len(values)}",
                   f"{first['parameters']:,}", f"{first['parameters'] * 4 / 1e6:.2f}",
                   f"**{means[mode][0]:.4f}** ({spread[0]})", f"{means[mode][1]:.4f} ({spread[1]})",
                   f"{means[mode][2]:.4f} ({spread[2]})", "", ""])
  teacher_accuracy = teacher["test"]["accuracy"]
  share = means["distill"][0] / teacher_accuracy
  ratio = teacher["parameters"] / runs["distill"][0][1]["parameters"]
  gain = means["distill"][0] - means["standard"][0]
  wins = sum(dr["test"]["accuracy"] > sr["test"]["accuracy"]
             for (_, dr, _, _), (_, sr, _, _) in zip(runs["distill"], runs["standard"]))
  print()
  print(f"command: {command}")
  print(f"data: {data_dir}: {metadata['splits']['train']['examples']:,} train clips "
        f"({FLAGS.speakers - FLAGS.dev_speakers - FLAGS.test_speakers} speakers), dev "
        f"{metadata['splits']['dev']['examples']:,} clips ({FLAGS.dev_speakers} other speakers; "
        f"validation), test {metadata['splits']['test']['examples']:,} clips ({FLAGS.test_speakers} "
        "speakers seen nowhere else); synthetic espeak-ng speech")
  print(f"teacher: {teacher_dir}; guidance: {guidance_dir}")
  print(f"student recipe: {FLAGS.student_config}; mode=standard and mode=distill with the same "
        f"steps and seeds ({', '.join(map(str, FLAGS.seeds))}); distillation: temperature "
        f"{d['temperature']:g}, kd weight (alpha) {d['alpha']:g}, hard weight {hard:g}, feature "
        f"weight {d['feature_weight']:g}")
  print(f"machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end; wall "
        f"time of this run {total / 60:.1f} min (stages run now: "
        + (", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) or "none, all reused") + ")")
  print()
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))
  for row in rows:
    print("| " + " | ".join(row) + " |")
  print()
  share_ok = share >= TARGET_SHARE
  ratio_ok = ratio >= TARGET_RATIO
  beat_ok = gain > 0
  over = f"mean of {len(FLAGS.seeds)} seeds" if len(FLAGS.seeds) > 1 else f"seed {FLAGS.seeds[0]}"
  print(f"| distilled student ({over}) | value | target | |")
  print("|---|---|---|---|")
  print(f"| test accuracy / teacher's (synthetic) | {100 * share:.1f}% | >= "
        f"{100 * TARGET_SHARE:.0f}% | {'met' if share_ok else 'missed'} |")
  print(f"| parameters / teacher's | 1/{ratio:.1f} | <= 1/{TARGET_RATIO} | "
        f"{'met' if ratio_ok else 'missed'} |")
  print(f"| test accuracy - standard student's (synthetic) | {100 * gain:+.1f} points "
        f"(higher for {wins} of {len(FLAGS.seeds)} seeds) | > 0 | "
        f"{'met' if beat_ok else 'missed'} |")
  print(f"| whole target | | | **{'met' if share_ok and ratio_ok and beat_ok else 'missed'}** |")

if __name__ == "__main__":
  app.run(main)
