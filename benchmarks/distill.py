r"""Distillation benchmark on the synthetic corpus: teacher, students, compressed students.

  .venv/bin/python benchmarks/distill.py [--work_dir=/tmp/kws_tf_distill]
      [--families=wav2letter,mobilenet_v3]
      [--methods=standard,distill,quantized_distill,qd_finetune,ptq,fitnet]
      [--bits=8,4,2] [--extra_seeds=0]

Not a test. Every number it prints is on **synthetic** espeak-ng speech. Stages,
each a separate program (the commands are printed) run as a ``kws_tf.stages``
stage: stamped in ``<work_dir>/stages/`` and skipped only while its program,
options and inputs are unchanged, so a re-run only redoes what changed:

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
6. compression (``--until=compression``, the default), for each of
            ``--families`` (``wav2letter``: ``--student_config``;
            ``mobilenet_v3``: ``--mobilenet_config``) and each of
            ``--extra_seeds``, the ``--methods``:
            ``standard`` and ``distill`` as in 5 (the wav2letter runs of 5 are
            reused); ``quantized_distill``: ``--mode=quantized_distill
            --override quantization.bits=B`` for each of ``--bits`` (Polino et
            al. 2018); ``qd_finetune``: the same, started with ``--init_from``
            from the float distilled student of that seed and trained
            ``--finetune_override`` (1000 steps at 2e-4); ``ptq``: ``kws_tf.bin.evaluate --quantize_bits=B`` of
            the float distilled student (post-training quantization, no
            training; test and dev); ``fitnet``: ``--mode=fitnet`` (Romero et
            al. 2014) with hints from ``create_guidance --guidance=hints
            --up_to=--hint_layer --splits=train,dev,test`` for stage 1 and the
            logits of 4 for stage 2.

Every run gets ``--override data.validation_split=dev``. Model and guidance
folders are named after a hash of everything that makes them (recipe,
overrides, data), so changing a recipe or an ``--*_override`` trains into a new
folder, next to the old one, while an unchanged one is read back from its
``results.json`` (a folder finished before stamps existed is adopted as it is).

The first table gives each model's parameters (all weights, batch-norm
statistics and the teacher's fixed position embeddings included), float32 size,
test and dev accuracy, test macro-F1 and training examples/s, then the
distilled student's mean test accuracy over the seeds as a share of the
teacher's and its parameter ratio, against the target: a student with at most
1/20 of the teacher's parameters that reaches at least 97% of the teacher's
accuracy and beats the same student trained without the teacher.

The compression table gives, per student and method, the bits per weight, the
parameters, the size in bits (``kws_tf.distill.quantization.model_size_bits``:
a quantized tensor takes ``bucket_size * bits + 64`` bits per bucket, every
other weight, batch norm included, 32 bits), the compression ratio against
float32, and test and dev accuracy. Its targets (test accuracy, means over the
same ``--extra_seeds``): 4-bit quantized distillation within 2 points of the
float distilled student and ahead of 4-bit post-training quantization (for
both quantized-distillation variants); FitNet
at least as good as plain distillation for the ``--student_config`` student
(the thinnest).
"""
import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)

import hashlib
import json
import os
import sys
import time
from typing import List, Optional

import yaml
from absl import app, flags

from kws_tf import config as config_lib
from kws_tf import records
from kws_tf.stages import Runner, Stage, quote


# Family of the compression table -> (its recipe flag, its override flag).
FAMILIES = {"wav2letter": ("student_config", "student_override"),
            "mobilenet_v3": ("mobilenet_config", "mobilenet_override")}
METHODS = ("standard", "distill", "quantized_distill", "qd_finetune", "ptq", "fitnet")
# Part of a fitnet run's folder key: the stage-2 loss it trains with
# (kws_tf.distill.objectives.FitNetKD).
FITNET_STAGE2_LOSS = "hard_weight * hard + lambda * alpha * T^2 * KL"
METHOD_NAMES = {"standard": "standard", "distill": "distill (KD)",
                "quantized_distill": "quantized distillation",
                "qd_finetune": "quantized distillation from the float distilled student",
                "ptq": "post-training quantization of distill", "fitnet": "FitNet (hints + KD)"}
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
flags.DEFINE_string("teacher_config", "teacher_kws",
                    "The teacher's recipe (a recipe name or a path).")
flags.DEFINE_string("student_config", "kws_small",
                    "The student's recipe (trained with --mode=standard and --mode=distill).")
flags.DEFINE_multi_string("teacher_override", [], "key=value for the teacher's recipe.")
flags.DEFINE_multi_string("student_override", [], "key=value for both student runs.")
flags.DEFINE_multi_string("distill_override", [], "key=value for the distilled run only "
                          "(distill.* settings; anything else would make the runs unequal).")
flags.DEFINE_list("seeds", ["0", "1", "2"], "Training seeds of the students: each seed trains "
                  "the standard and the distilled student; the target is judged on the means.")
flags.DEFINE_enum("until", "compression",
                  ["records", "teacher", "guidance", "students", "compression"],
                  "Last stage to run.")
flags.DEFINE_string("mobilenet_config", "kws_mobilenet_v3_small_kd",
                    "The MobileNetV3 student's recipe (family mobilenet_v3).")
flags.DEFINE_multi_string("mobilenet_override", [], "key=value for every MobileNetV3 run "
                          "(--student_override is for the wav2letter runs only).")
flags.DEFINE_list("families", list(FAMILIES), "Students of the compression table: "
                  "wav2letter (--student_config) and/or mobilenet_v3 (--mobilenet_config).")
flags.DEFINE_list("methods", list(METHODS), "Rows of the compression table: " + ", ".join(METHODS)
                  + " (ptq: post-training quantization of the float distilled student).")
flags.DEFINE_list("bits", ["8", "4", "2"], "Bits per weight of quantized_distill and ptq.")
flags.DEFINE_list("extra_seeds", ["0"], "Training seeds of the compression table's runs (the "
                  "wav2letter standard and distill rows also show every one of --seeds).")
flags.DEFINE_integer("hint_layer", 2, "FitNet hint: the teacher's encoder hidden state "
                     "(create_guidance --up_to; 0 = embeddings; the 4-layer teacher's middle is 2).")
flags.DEFINE_multi_string("quantized_override", [], "key=value for the quantized_distill runs "
                          "only (quantization.*; quantization.bits comes from --bits).")
flags.DEFINE_multi_string("finetune_override", ["train.steps=1000",
                          "optimizer.learning_rate=2e-4", "optimizer.warmup_steps=0"],
                          "key=value for the qd_finetune runs: quantized distillation started "
                          "(kws-train --init_from) from the float distilled student of the same "
                          "seed, after --quantized_override.")
flags.DEFINE_multi_string("fitnet_override", [], "key=value for the fitnet runs only "
                          "(fitnet.*, and distill.* for stage 2's loss).")

# Every run validates on the dev speakers (the recipes' default is a hold-out
# of train clips, whose speakers are also in training).
BENCHMARK_OVERRIDES = ["data.validation_split=dev"]
TARGET_RATIO = 20          # the student has at most 1/20 of the teacher's parameters
TARGET_SHARE = 0.97        # and at least 97% of its test accuracy
QD_TARGET_BITS = 4         # quantized distillation at 4 bits
QD_TARGET_POINTS = 0.02    # within 2 points of the float distilled student


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
  """The resolved recipe as YAML: what the train binary writes to config.yaml,
  less the ``fitnet`` section unless the mode is fitnet and less
  ``data.normalize`` while it is true.

  Both came after the first runs of this benchmark (only mode=fitnet reads
  that section; true is what those runs did): leaving them out of the hash
  keeps their folders (and results).
  """
  overrides = list(overrides) + ([f"mode={mode}"] if mode else [])
  config = config_lib.load(path, overrides)
  values = config_lib.to_dict(config)
  if config.mode != "fitnet":
    del values["fitnet"]
  if config.data.normalize:
    del values["data"]["normalize"]
  return yaml.safe_dump(values, sort_keys=False, allow_unicode=True)


def _train(runner: Runner, name: str, config: str, overrides: List[str], mode: str,
           data: Stage, model_dir: str, guidance: Optional[Stage] = None,
           hints: Optional[Stage] = None, init_from: Optional[Stage] = None) -> Stage:
  """Runs (or skips) one kws-train run into ``model_dir``; returns its stage."""
  options = [f"--config={config}", f"--mode={mode}", f"--data_dir={data.outputs[0]}",
             f"--model_dir={model_dir}"]
  options += [f"--override={o}" for o in overrides]
  inputs = [data, config_lib.find_recipe(config)]
  for flag, stage in (("guidance_dir", guidance), ("hints_dir", hints), ("init_from", init_from)):
    if stage:
      options.append(f"--{flag}={stage.outputs[0]}")
      inputs.append(stage)
  stage = Stage(name, "kws_tf.bin.train", options, inputs=inputs, outputs=[model_dir],
                done=[os.path.join(model_dir, "results.json")], resumable=True,
                key=os.path.basename(model_dir), adopt=True)
  runner.run(stage)
  return stage


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


def _student(runner: Runner, family: str, mode: str, seed: str, bits: Optional[int],
             data: Stage, fingerprint: str, guidance: Stage, hints: Optional[Stage],
             init_from: Optional[dict] = None) -> dict:
  """Trains one student run of ``family`` (or reads it back).

  Returns ``{"results", "model_dir", "config", "stage"}`` (``config``: the
  resolved recipe as a mapping). ``bits`` is for mode=quantized_distill only,
  ``hints`` for mode=fitnet only; ``init_from`` (another ``_student`` result)
  makes a fine-tuning run from it with ``--finetune_override``.
  """
  config_flag, override_flag = FAMILIES[family]
  config = getattr(FLAGS, config_flag)
  overrides = BENCHMARK_OVERRIDES + getattr(FLAGS, override_flag) + [f"train.seed={seed}"]
  if mode != "standard":
    overrides += FLAGS.distill_override
  if mode == "quantized_distill":
    overrides += FLAGS.quantized_override + [f"quantization.bits={bits}"]
  if init_from:
    overrides += FLAGS.finetune_override
  if mode == "fitnet":
    overrides += FLAGS.fitnet_override
  resolved = _resolved(config, overrides, mode)
  key = (resolved, fingerprint)
  if mode != "standard":
    key += (guidance.outputs[0],)
  if mode == "fitnet":
    key += (hints.outputs[0], FITNET_STAGE2_LOSS)
  if init_from:
    key += (init_from["model_dir"],)
  model_dir = os.path.join(FLAGS.work_dir, "models", f"student_{mode}-{_digest(*key)}")
  name = (f"{family} ({mode}{f', {bits} bits' if bits else ''}"
          f"{', from the distilled student' if init_from else ''}, seed {seed})")
  stage = _train(runner, name, config, overrides, mode, data, model_dir,
                 guidance if mode != "standard" else None, hints if mode == "fitnet" else None,
                 init_from["stage"] if init_from else None)
  return {"results": records.read_json(stage.done_files[0]), "model_dir": model_dir,
          "config": yaml.safe_load(resolved), "stage": stage}


def _ptq(runner: Runner, name: str, model: Stage, data: Stage, split: str, bits: int,
         bucket_size: int) -> dict:
  """Post-training quantization of a trained model, evaluated on ``split`` (or read back)."""
  model_dir = model.outputs[0]
  out = os.path.join(model_dir, "eval", f"{split}-q{bits}")
  stage = Stage(name, "kws_tf.bin.evaluate",
                [f"--model_dirs={model_dir}", f"--data_dir={data.outputs[0]}", f"--split={split}",
                 f"--quantize_bits={bits}", f"--bucket_size={bucket_size}", "--beam_width=0",
                 "--batch_size=64"], inputs=[model, data], outputs=[out],
                done=[os.path.join(out, "results.json")],
                key=f"{os.path.basename(model_dir)}-{split}-q{bits}")
  runner.run(stage)
  return records.read_json(stage.done_files[0])


def _seeds(family: str, method: str) -> List[str]:
  """Seeds of a compression-table row: --extra_seeds, plus --seeds for the
  wav2letter standard and distill runs (trained in stage 5 anyway)."""
  if family == "wav2letter" and method in ("standard", "distill"):
    return list(dict.fromkeys(FLAGS.seeds + FLAGS.extra_seeds))
  return list(FLAGS.extra_seeds)


def _compression_row(family: str, method: str, bits: int, seed: str, model: str,
                     parameters: int, size: Optional[dict], test: float,
                     dev: Optional[float]) -> dict:
  """One row of the compression table; ``size`` is a results' "quantization"
  dict (None: float32)."""
  size_bits = size["total_bits"] if size else 32 * parameters
  ratio = size["compression_ratio"] if size else 1.0
  return {"family": family, "method": method, "bits": bits, "seed": seed, "model": model,
          "parameters": parameters, "size_bits": size_bits, "ratio": ratio, "test": test,
          "dev": dev}


def _mean(rows: List[dict], family: str, method: str, bits: int, seeds: List[str],
          key: str) -> Optional[float]:
  """Mean of ``key`` over the rows of ``seeds``; None unless every seed has a value."""
  values = [r[key] for r in rows if r["family"] == family and r["method"] == method
            and r["bits"] == bits and r["seed"] in seeds and r[key] is not None]
  return sum(values) / len(values) if values and len(values) == len(seeds) else None


def _print_compression(rows: List[dict], fitnets: List[tuple],
                       quantized_config: Optional[dict]) -> None:
  """The compression table, the FitNet hint stages and the compression targets."""
  print()
  if quantized_config:
    q = quantized_config
    print(f"quantized distillation: the distill recipe (same steps, T, alpha) trained at its "
          f"quantized weights (straight-through), buckets of {q['bucket_size']}, stochastic "
          f"rounding {str(q['stochastic']).lower()}, first and last layers float32 "
          f"{str(q['keep_first_last_float']).lower()}; post-training quantization: the float "
          "distilled student's kernels and biases rounded once to the nearest level "
          "(kws_tf.bin.evaluate --quantize_bits), same buckets; batch norm float32 in both. "
          "Size: bucket_size * bits + 64 bits per bucket of a quantized tensor, 32 bits per "
          "other value.")
  for family, seed, model_dir, results in fitnets:
    stage1 = os.path.join(model_dir, "fitnet_stage1")
    with open(os.path.join(stage1, "results.json"), encoding="utf-8") as f:
      hint = json.load(f)
    with open(os.path.join(model_dir, "config.yaml"), encoding="utf-8") as f:
      fitnet_cfg = yaml.safe_load(f)["fitnet"]
    plan = hint["fitnet"]  # stage 1's plan: guided layer, stride, alignment, hint layer
    dev = hint["validation_value"]
    test = hint.get("test", {}).get("hint")
    print(f"FitNet {family} seed {seed}: stage 1 {hint['steps']} steps (best {hint['best_step']})"
          f" regresses layer {plan['guided_layer']!r} (stride {plan['stride']}, "
          f"{plan['alignment']} x{plan['factor']}) onto teacher encoder layer "
          f"{plan['hint_layer']} ({plan['hint_dim']} wide): hint MSE dev {dev:.4f}, test "
          + ("n/a" if test is None else f"{test:.4f}") + f"; stage 2 {results['steps']} steps "
          f"(best {results['best_step']}), lambda {fitnet_cfg['kd_weight_start']:g} -> "
          f"{fitnet_cfg['kd_weight_end']:g}.")
  header = ["model", "method", "bits", "seed", "parameters", "size (bits)", "size (kB)",
            "compression vs float32", "test accuracy (synthetic)", "dev accuracy (synthetic)"]
  print()
  print("| " + " | ".join(header) + " |")
  print("|" + "---|" * len(header))

  def cells(r: dict, seed: str) -> List[str]:
    dev = "n/a" if r["dev"] is None else f"{r['dev']:.4f}"
    return [r["model"], METHOD_NAMES[r["method"]],
            "32 (float)" if r["bits"] == 32 else str(r["bits"]), seed, f"{r['parameters']:,}",
            f"{r['size_bits']:,}", f"{r['size_bits'] / 8000:.1f}", f"{r['ratio']:.1f}x",
            f"{r['test']:.4f}", dev]

  # Rows in the order of --families, METHODS and falling bits, whatever order they ran in.
  groups = []
  for r in rows:
    group = (r["family"], r["method"], r["bits"])
    if group not in groups:
      groups.append(group)
  groups.sort(key=lambda g: (FLAGS.families.index(g[0]), METHODS.index(g[1]), -g[2]))
  for group in groups:
    members = [r for r in rows if (r["family"], r["method"], r["bits"]) == group]
    for r in members:
      print("| " + " | ".join(cells(r, r["seed"])) + " |")
    if len(members) > 1:
      seeds = [r["seed"] for r in members]
      mean = dict(members[0], test=_mean(rows, *group, seeds, "test"),
                  dev=_mean(rows, *group, seeds, "dev"))
      row = cells(mean, f"mean of {len(members)}")
      row[8] = f"**{row[8]}**"
      print("| " + " | ".join(row) + " |")

  # Targets, on the means over the same --extra_seeds.
  seeds = list(FLAGS.extra_seeds)
  print()
  print(f"| compression target (test accuracy, synthetic; seed{'s' if len(seeds) > 1 else ''} "
        f"{', '.join(seeds)}) | value (dev in brackets) | target | |")
  print("|---|---|---|---|")
  families = list(dict.fromkeys(r["family"] for r in rows))

  def target(label: str, family: str, a: tuple, b: tuple, threshold: float,
             strict: bool) -> None:
    values = [_mean(rows, family, *x, seeds, key) for x in (a, b) for key in ("test", "dev")]
    if values[0] is None or values[2] is None:
      print(f"| {label} | not run | | |")
      return
    gain = values[0] - values[2]
    dev = ("" if values[1] is None or values[3] is None
           else f" ({100 * (values[1] - values[3]):+.1f})")
    ok = gain > threshold if strict else gain >= threshold
    print(f"| {label} | {100 * gain:+.1f} points{dev} | {'>' if strict else '>='} "
          f"{100 * threshold:+.1f} points | {'met' if ok else 'missed'} |")

  for family in families:
    model = next(r["model"] for r in rows if r["family"] == family)
    qd = ("quantized_distill", QD_TARGET_BITS)
    target(f"{model}: {QD_TARGET_BITS}-bit quantized distillation - float distilled student",
           family, qd, ("distill", 32), -QD_TARGET_POINTS, False)
    target(f"{model}: {QD_TARGET_BITS}-bit quantized distillation - {QD_TARGET_BITS}-bit "
           "post-training quantization", family, qd, ("ptq", QD_TARGET_BITS), 0.0, True)
    qd_tuned = ("qd_finetune", QD_TARGET_BITS)
    target(f"{model}: {QD_TARGET_BITS}-bit quantized distillation from the float distilled "
           "student - float distilled student", family, qd_tuned, ("distill", 32),
           -QD_TARGET_POINTS, False)
    target(f"{model}: {QD_TARGET_BITS}-bit quantized distillation from the float distilled "
           f"student - {QD_TARGET_BITS}-bit post-training quantization", family, qd_tuned,
           ("ptq", QD_TARGET_BITS), 0.0, True)
    if family == "wav2letter":
      target(f"{model} (the thinnest student): FitNet - distilled student", family,
             ("fitnet", 32), ("distill", 32), 0.0, False)
  print()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  started = time.time()
  command = quote([sys.executable] + sys.argv)
  print(f"command: {command}", flush=True)
  runner = Runner(os.path.join(FLAGS.work_dir, "stages"))

  # 1-2. Corpus and records, in folders named after the corpus flags.
  held_out = FLAGS.dev_speakers + FLAGS.test_speakers
  corpus_key = (f"s{FLAGS.speakers}-d{FLAGS.dev_speakers}-t{FLAGS.test_speakers}"
                f"-u{FLAGS.utterances_per_speaker}-seed{FLAGS.corpus_seed}")
  corpus = os.path.join(FLAGS.work_dir, f"corpus-{corpus_key}")
  data_dir = os.path.join(FLAGS.work_dir, f"records-{corpus_key}", "kws")
  cores = [f"--cores={FLAGS.cores}"]
  # synthesize_corpus skips the speakers it has finished; the split files are its last writes.
  corpus_stage = Stage(
      "corpus", "data_prep.synthesize_corpus",
      [f"--out_dir={corpus}", f"--speakers={FLAGS.speakers}", f"--test_speakers={held_out}",
       f"--utterances_per_speaker={FLAGS.utterances_per_speaker}",
       f"--seed={FLAGS.corpus_seed}"], outputs=[corpus],
      done=[os.path.join(corpus, split, "alignments.ctm") for split in ("train", "test")],
      untracked=cores, resumable=True, key=f"corpus-{corpus_key}", adopt=True)
  runner.run(corpus_stage)
  view = os.path.join(FLAGS.work_dir, f"splits-{corpus_key}")
  split_view(corpus, view, FLAGS.dev_speakers)
  data = Stage(
      "records", "data_prep.create_tfrecords",
      [f"--data_dir={view}", "--corpus=vivos", f"--out_dir={data_dir}",
       "--splits=train,dev,test", "--formats=logmel,mfcc", "--task=kws",
       f"--alignments={os.path.join(view, '*', 'alignments.ctm')}"],
      inputs=[corpus_stage], outputs=[data_dir], done=[os.path.join(data_dir, "metadata.json")],
      untracked=cores, resumable=True, key=f"records-{corpus_key}", adopt=True)
  runner.run(data)
  metadata = records.load_metadata(data_dir)
  if FLAGS.until == "records":
    return

  # 3. Teacher.
  teacher_overrides = BENCHMARK_OVERRIDES + FLAGS.teacher_override
  teacher_yaml = _resolved(FLAGS.teacher_config, teacher_overrides)
  teacher_dir = os.path.join(FLAGS.work_dir, "models",
                             f"teacher-{_digest(teacher_yaml, metadata.fingerprint)}")
  teacher_stage = _train(runner, "teacher", FLAGS.teacher_config, teacher_overrides,
                         "standard", data, teacher_dir)
  teacher = records.read_json(teacher_stage.done_files[0])
  if FLAGS.until == "teacher":
    return

  # 4. Guidance: the teacher's logits and feature layer for every split.
  guidance_dir = os.path.join(FLAGS.work_dir, "guidance",
                              f"{os.path.basename(teacher_dir)}-best-{teacher['best_step']}")
  guidance = Stage("guidance", "data_prep.create_guidance",
                   [f"--teacher_dir={teacher_dir}", f"--data_dir={data_dir}",
                    f"--out_dir={guidance_dir}", "--guidance=logits", "--splits=train"],
                   inputs=[teacher_stage, data], outputs=[guidance_dir],
                   done=[os.path.join(guidance_dir, "metadata.json")],
                   key=os.path.basename(guidance_dir), adopt=True)
  runner.run(guidance)
  if FLAGS.until == "guidance":
    return

  # 5. The same student, standard and distilled, once per seed.
  runs = {"standard": [], "distill": []}
  for seed in FLAGS.seeds:
    for mode in ("standard", "distill"):
      run = _student(runner, "wav2letter", mode, seed, None, data, metadata.fingerprint,
                     guidance, None)
      runs[mode].append((seed, run["results"], run["model_dir"], run["config"]))

  # 6. The compression table: each family's methods.
  compression, fitnets = [], []
  hints = None
  if FLAGS.until == "compression" and "fitnet" in FLAGS.methods:
    hints_dir = f"{guidance_dir}-hints{FLAGS.hint_layer}"
    hints = Stage("hints", "data_prep.create_guidance",
                  [f"--teacher_dir={teacher_dir}", f"--data_dir={data_dir}",
                   f"--out_dir={hints_dir}", "--guidance=hints", f"--up_to={FLAGS.hint_layer}",
                   "--splits=train,dev,test"], inputs=[teacher_stage, data], outputs=[hints_dir],
                  done=[os.path.join(hints_dir, "metadata.json")],
                  key=os.path.basename(hints_dir), adopt=True)
    runner.run(hints)
  unknown = sorted(set(FLAGS.families) - set(FAMILIES)) + sorted(set(FLAGS.methods) - set(METHODS))
  if unknown:
    raise app.UsageError(f"unknown --families or --methods: {', '.join(unknown)}")
  bits_list = [int(b) for b in FLAGS.bits]
  quantized_config = None
  for family in FLAGS.families if FLAGS.until == "compression" else []:
    for method in FLAGS.methods:
      for bits in bits_list if method in ("quantized_distill", "qd_finetune", "ptq") else [32]:
        for seed in _seeds(family, method):
          fingerprint = metadata.fingerprint
          if method == "ptq":
            run = _student(runner, family, "distill", seed, None, data, fingerprint, guidance,
                           None)
            # The bucket size of the quantized_distill runs, so both quantize alike.
            config_flag, override_flag = FAMILIES[family]
            bucket_size = config_lib.load(
                getattr(FLAGS, config_flag),
                getattr(FLAGS, override_flag) + FLAGS.quantized_override).quantization.bucket_size
            name = f"{family} (ptq, {bits} bits, seed {seed})"
            test = _ptq(runner, f"{name}, test", run["stage"], data, "test", bits, bucket_size)
            dev = _ptq(runner, f"{name}, dev", run["stage"], data, "dev", bits, bucket_size)
            compression.append(_compression_row(
                family, method, bits, seed, test["model"], test["parameters"],
                test["quantization"], test["accuracy"], dev["accuracy"]))
            continue
          if method == "qd_finetune":
            base = _student(runner, family, "distill", seed, None, data, fingerprint, guidance,
                            None)
            run = _student(runner, family, "quantized_distill", seed, bits, data, fingerprint,
                           guidance, None, init_from=base)
          else:
            run = _student(runner, family, method, seed,
                           bits if method == "quantized_distill" else None,
                           data, fingerprint, guidance, hints)
          results = run["results"]
          if method == "quantized_distill":
            quantized_config = run["config"]["quantization"]
          if method == "fitnet":
            fitnets.append((family, seed, run["model_dir"], results))
          compression.append(_compression_row(
              family, method, bits, seed, results["model"], results["parameters"],
              results.get("quantization"), results["test"]["accuracy"],
              _validation_accuracy(run["model_dir"])))

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
        + (", ".join(f"{k} {v:.0f} s" for k, v in runner.timings.items()) or "none, all reused")
        + ")")
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
  if compression:
    _print_compression(compression, fitnets, quantized_config)

if __name__ == "__main__":
  app.run(main)
