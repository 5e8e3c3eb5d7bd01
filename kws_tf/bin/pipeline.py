r"""The main job, end to end, as a chain of stages (``kws_tf.stages``).

  kws-pipeline --workdir=workdir

For each task (``kws`` by default; ``ctc`` too with ``--tasks=kws,ctc``)::

  corpus    data_prep.synthesize_corpus    <workdir>/corpus (VIVOS layout + CTM; varied
                                            voices, grammar and gettext sentences)
  records   data_prep.create_tfrecords     <workdir>/records/<task>, formats and feature
                                            parameters of the data recipe records_<task>
                                            (kws: raw clips with 0.5 s of context, logmel,
                                            and the student's phone-sized mfcc)
  teacher   kws_tf.bin.train (role=teacher) <workdir>/models/<task>/teacher
  guidance  data_prep.create_guidance       <workdir>/guidance/<task> (logits; kws: of
                                            ``--views`` augmented views per clip)
  students  kws_tf.bin.train                <workdir>/models/<task>/{standard,distill,
                                            quantized_distill}
  evaluate  kws_tf.bin.evaluate             <model dir>/eval/test/
  export    kws_tf.bin.export_tflite        <workdir>/export/<task>/<model>/ (int8 TFLite
                                            with the front end inside + model card; the
                                            distilled kws student also model_stream_int8)
  robustness data_prep.robustness_set      <workdir>/robustness (kws: held-out voices,
                                            rates, texts and conditions), every
                                            exported file scored on it

With ``--augment`` (the default) the kws teacher and students train on
waveforms augmented on the fly (``kws_tf.augment``), and the students distil
from the teacher's logits for the very views they see.

Then a table (``<workdir>/results.md`` and ``results.json``): each model's
parameters, file size, test accuracy (or CER) on the test speakers, the
exported file's keyword recall on the robustness set at 5% false accepts (and
its argmax decision's recall and false accepts), and its single-thread latency
per clip.

Every stage is a separate program whose command is printed. Its stamp in
``<workdir>/stages/`` records the fingerprint of its program, options and
inputs (the recipes it reads, the stages before it); it is skipped only when
that fingerprint is unchanged, and otherwise reruns (after one line saying
what changed) together with every stage after it. A stage killed mid-way has
no complete stamp, so re-running the same command after a kill finishes the
job; the corpus, the records and the training runs resume their partial output.

The teacher is a Whisper encoder with a KWS (or CTC) head: on top of the
frozen encoder of ``--teacher`` when that is a Whisper checkpoint directory
(Hugging Face PhoWhisper, or CTranslate2 such as ``kws-get-whisper-base``'s;
by default ``<workdir>/models/whisper-base`` when present), else trained from
scratch with a small Whisper-architecture config.
"""
import dataclasses
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import kws_tf  # noqa: F401  (Keras 2 before TensorFlow)
from absl import app, flags

from kws_tf import cli, inference, records
from kws_tf import config as config_lib
from kws_tf.evaluation import robustness
from kws_tf.stages import Runner, Stage, StageError

TEACHER_RECIPES = {"kws": "teacher_kws", "ctc": "teacher_ctc"}
# Recipes for a head on a frozen pretrained encoder (with a checkpoint).
PRETRAINED_TEACHER_RECIPES = {"kws": "teacher_kws_whisper", "ctc": "teacher_ctc_whisper"}
# The learning rate of a pretrained teacher whose top blocks are fine-tuned (--teacher_blocks):
# half the head-only recipe's, as in benchmarks/README.md's fine-tuned teachers.
TEACHER_FINE_TUNE_LR = 5e-4
STUDENT_RECIPES = {"kws": "kws_small", "ctc": "ctc_small"}
# What the converter writes per task; records_kws holds the kws student's front end.
DATA_RECIPES = {"kws": "records_kws", "ctc": "records_ctc"}
STUDENT_MODES = ("standard", "distill", "quantized_distill")
WHISPER_BASE_DIR = os.path.join("models", "whisper-base")
STAMPS_DIR = "stages"


class PipelineError(RuntimeError):
  """The options cannot work (the message says what to do)."""


@dataclasses.dataclass
class Options:
  """What the pipeline makes and how long it trains.

  Fields:
    workdir: where every stage writes.
    speakers, test_speakers, utterances_per_speaker, seed: the synthetic
      corpus (test speakers are held out of training).
    cores: worker processes of the data stages.
    tasks: ``kws`` and/or ``ctc``.
    teacher: ``auto`` (the Whisper-base directory ``<workdir>/models/whisper-base``
      when present, else from scratch), ``scratch``, or a Whisper checkpoint
      directory (Hugging Face or CTranslate2).
    teacher_blocks: a pretrained teacher's top encoder blocks fine-tuned with
      its head (0: the encoder stays frozen), at ``TEACHER_FINE_TUNE_LR``.
    teacher_steps, student_steps: optimizer steps of each training run.
    quantize_bits: bits of the quantized-distilled student.
    num_parity: test examples of the export's Keras-vs-TFLite parity check.
    voices, texts: the corpus's ``synthesize_corpus --voices`` and ``--texts``.
    augment: kws: train the teacher and the students on waveforms augmented
      on the fly (the recipes' ``augment`` section), and distil from the
      teacher's logits for ``views`` augmented views of every clip.
    robustness_speakers, robustness_utterances: the kws robustness set's
      held-out speakers and utterances per speaker.
  """
  workdir: str = "workdir"
  speakers: int = 28
  test_speakers: int = 4
  utterances_per_speaker: int = 60
  seed: int = 0
  cores: int = os.cpu_count() or 1
  tasks: Sequence[str] = ("kws",)
  teacher: str = "auto"
  teacher_blocks: int = 0
  teacher_steps: int = 400
  student_steps: int = 2000
  quantize_bits: int = 4
  num_parity: int = 100
  voices: str = "varied"
  texts: str = "mixed"
  augment: bool = True
  views: int = 2
  robustness_speakers: int = 6
  robustness_utterances: int = 20


def teacher_checkpoint(options: Options) -> Optional[str]:
  """The Whisper checkpoint the teacher is built on, or None (from scratch)."""
  if options.teacher == "scratch":
    return None
  if options.teacher == "auto":
    candidate = os.path.join(options.workdir, WHISPER_BASE_DIR)
    present = all(os.path.exists(os.path.join(candidate, f)) for f in ("model.bin", "config.json"))
    return os.path.abspath(candidate) if present else None
  if not os.path.isdir(options.teacher):
    raise PipelineError(f"teacher checkpoint {options.teacher} is not a directory")
  return os.path.abspath(options.teacher)


def _train_steps(steps: int, validations: int = 10) -> List[str]:
  """Overrides that fit a recipe's schedule to ``steps``, validated ``validations`` times."""
  every = max(steps // validations, 1)
  return [f"train.steps={steps}", f"train.eval_every={every}", f"train.checkpoint_every={every}",
          f"train.log_every={max(every // 4, 1)}", "train.early_stopping_patience=0",
          f"optimizer.warmup_steps={min(100, steps // 10)}"]


def train_stage(name: str, recipe: str, model_dir: str, data: Stage, overrides: List[str],
                mode: Optional[str] = None, guidance: Optional[Stage] = None,
                checkpoint: Optional[str] = None) -> Stage:
  """A kws-train run of ``recipe`` (a recipe name) on ``data``'s records into ``model_dir``."""
  options = [f"--config={recipe}", f"--model_dir={model_dir}", f"--data_dir={data.outputs[0]}"]
  options += [f"--override={o}" for o in overrides]
  inputs = [data, config_lib.find_recipe(recipe)]
  if mode:
    options.append(f"--mode={mode}")
  if guidance:
    options.append(f"--guidance_dir={guidance.outputs[0]}")
    inputs.append(guidance)
  if checkpoint:
    inputs.append(checkpoint)
  return Stage(name, "kws_tf.bin.train", options, inputs=inputs, outputs=[model_dir],
               done=[os.path.join(model_dir, "results.json")], resumable=True)


def data_stages(options: Options) -> Dict[str, Stage]:
  """The corpus and each task's records: ``corpus`` and ``records <task>``."""
  corpus = os.path.join(options.workdir, "corpus")
  cores = [f"--cores={options.cores}"]
  stages = {"corpus": Stage(
      "corpus", "data_prep.synthesize_corpus",
      [f"--out_dir={corpus}", f"--speakers={options.speakers}",
       f"--test_speakers={options.test_speakers}",
       f"--utterances_per_speaker={options.utterances_per_speaker}",
       f"--seed={options.seed}", f"--voices={options.voices}", f"--texts={options.texts}"],
      outputs=[corpus],
      done=[os.path.join(corpus, split, "alignments.ctm") for split in ("train", "test")],
      untracked=cores, resumable=True)}  # the synthesizer skips the speakers it has finished
  for task in options.tasks:
    out = os.path.join(options.workdir, "records", task)
    args = [f"--data_dir={corpus}", "--corpus=vivos", f"--out_dir={out}",
            "--splits=train,test", f"--task={task}"]
    args += config_lib.load_data_recipe(DATA_RECIPES[task]).converter_flags()
    if task == "kws":
      args.append(f"--alignments={os.path.join(corpus, '*', 'alignments.ctm')}")
    stages[f"records {task}"] = Stage(
        f"records ({task})", "data_prep.create_tfrecords", args, inputs=[stages["corpus"]],
        outputs=[out], done=[os.path.join(out, records.METADATA_FILE)], untracked=cores,
        resumable=True)  # the converter skips finished shards
  return stages


def model_stages(options: Options, task: str, data: Stage,
                 checkpoint: Optional[str]) -> Dict[str, Stage]:
  """The teacher, its guidance and the students of ``task``: model name (and
  ``guidance``) -> Stage, in the order they run."""
  data_dir = data.outputs[0]
  models = os.path.join(options.workdir, "models", task)
  augment = options.augment and task == "kws"
  augmented = ["augment.enabled=true"] if augment else []
  # A Whisper-sized teacher validates twice: each validation runs it over the held-out clips.
  teacher_overrides = _train_steps(options.teacher_steps, validations=2) + augmented
  recipe = TEACHER_RECIPES[task]
  if checkpoint:
    teacher_overrides.append(f"model.params.checkpoint={checkpoint}")
    recipe = PRETRAINED_TEACHER_RECIPES[task]
    if options.teacher_blocks:
      teacher_overrides += [f"model.params.trainable_blocks={options.teacher_blocks}",
                            f"optimizer.learning_rate={TEACHER_FINE_TUNE_LR}"]
  elif options.teacher_blocks:
    raise PipelineError("--teacher_blocks fine-tunes a pretrained teacher's encoder, but the "
                     "teacher is trained from scratch (--teacher=scratch, or no Whisper-base "
                     "directory for --teacher=auto)")
  teacher = train_stage(f"teacher ({task})", recipe, os.path.join(models, "teacher"), data,
                        teacher_overrides, checkpoint=checkpoint)
  guidance_dir = os.path.join(options.workdir, "guidance", task)
  views, inputs = [], [teacher, data]
  if augment:  # the teacher's logits for the views the students will see
    views = [f"--views={options.views}", "--nofeatures",
             f"--augment_recipe={STUDENT_RECIPES[task]}", "--override=augment.enabled=true"]
    inputs.append(config_lib.find_recipe(STUDENT_RECIPES[task]))
  guidance = Stage(
      f"guidance ({task})", "data_prep.create_guidance",
      [f"--teacher_dir={teacher.outputs[0]}", f"--data_dir={data_dir}",
       f"--out_dir={guidance_dir}", "--guidance=logits", "--splits=train"] + views,
      inputs=inputs, outputs=[guidance_dir],
      done=[os.path.join(guidance_dir, records.METADATA_FILE)])
  stages = {"teacher": teacher, "guidance": guidance}
  for mode in STUDENT_MODES:
    overrides = _train_steps(options.student_steps) + augmented
    if mode == "quantized_distill":
      overrides.append(f"quantization.bits={options.quantize_bits}")
    stages[mode] = train_stage(f"student {mode} ({task})", STUDENT_RECIPES[task],
                               os.path.join(models, mode), data, overrides, mode=mode,
                               guidance=None if mode == "standard" else guidance)
  return stages


def evaluate_stage(task: str, trained: Dict[str, Stage], data: Stage) -> Stage:
  """One kws-evaluate run over every model of ``trained`` (name -> train stage)."""
  dirs = [s.outputs[0] for s in trained.values()]
  outs = [os.path.join(d, "eval", "test") for d in dirs]
  return Stage(f"evaluate ({task})", "kws_tf.bin.evaluate",
               [f"--model_dirs={','.join(dirs)}", f"--data_dir={data.outputs[0]}",
                "--split=test"], inputs=[data, *trained.values()], outputs=outs,
               done=[os.path.join(o, "results.json") for o in outs])


def export_stage(options: Options, task: str, name: str, model: Stage, data: Stage,
                 corpus: Stage) -> Stage:
  """int8 TFLite of a student (float32 of the teacher) with its model card; the
  distilled kws student also as a streaming int8 file (``stream_int8``)."""
  out = os.path.join(options.workdir, "export", task, name)
  fmt = "float32" if name == "teacher" else "int8"
  formats = [fmt, "stream_int8"] if (task, name) == ("kws", "distill") else [fmt]
  return Stage(f"export {name} ({task})", "kws_tf.bin.export_tflite",
               [f"--model_dir={model.outputs[0]}", f"--data_dir={data.outputs[0]}",
                f"--out_dir={out}", f"--formats={','.join(formats)}",
                f"--num_parity={options.num_parity}", f"--audio_dir={corpus.outputs[0]}"],
               inputs=[model, data, corpus], outputs=[out],
               done=[os.path.join(out, f"model_{f}.json") for f in formats])


def robustness_stage(options: Options) -> Stage:
  """The kws robustness set: held-out voices, rates and texts under noise,
  reverberation, telephone and level changes."""
  set_dir = os.path.join(options.workdir, "robustness")
  return Stage("robustness set", "data_prep.robustness_set",
               [f"--out_dir={set_dir}", f"--speakers={options.robustness_speakers}",
                f"--utterances_per_speaker={options.robustness_utterances}",
                f"--seed={options.seed}"], outputs=[set_dir],
               done=[os.path.join(set_dir, robustness.MANIFEST)],
               untracked=[f"--cores={options.cores}"])


def score_robustness(options: Options, cards: Dict[str, dict], set_dir: str
                     ) -> Dict[str, dict]:
  """Each exported kws file (name -> model card) on the robustness set; name -> metrics."""
  out = {}
  for name, card in cards.items():
    path = os.path.join(options.workdir, "export", "kws", name, card["file"])
    out[name] = robustness.evaluate(inference.load_model(path, num_threads=1),
                                    inference.read_card(path), set_dir)
  return out


def _metric(task: str, values: dict) -> str:
  if task == "kws":
    return f"{values['accuracy']:.4f}"
  return f"{values['cer']:.4f}"


def summary(options: Options, task: str, checkpoint: Optional[str], dirs: Dict[str, str],
            evaluations: Dict[str, dict], cards: Dict[str, dict],
            robust: Optional[Dict[str, dict]] = None) -> List[dict]:
  """One row per model: what the table shows, as plain values."""
  metric = "accuracy" if task == "kws" else "cer"
  rows = []
  for name, model_dir in dirs.items():
    card, evaluation = cards[name], evaluations[name]
    parity = card["parity"]
    rows.append({
        "task": task, "model": name, "architecture": evaluation["model"],
        "teacher": "Whisper checkpoint " + checkpoint if checkpoint else
                   "Whisper architecture trained from scratch",
        "parameters": evaluation["parameters"], "metric": metric,
        "test": evaluation[metric], "test_examples": evaluation["num_examples"],
        "file": card["file"], "file_format": card["format"], "size_bytes": card["size_bytes"],
        "parity_examples": parity["num_examples"], "parity_keras": parity["keras"][metric],
        "parity_tflite": parity["exported"][metric],
        "max_abs_logit_error": parity["max_abs_logit_error"],
        "latency_ms": card["latency_ms_single_thread"], "model_dir": model_dir,
        "export_dir": os.path.join(options.workdir, "export", task, name),
        "robustness": None if robust is None else robust[name]})
  return rows


def _robust_cell(metrics: Optional[dict]) -> str:
  """Keyword recall at 5% false accepts (all windows, then centred / offset
  keywords), then the argmax decision's recall and false accepts."""
  if metrics is None:
    return "n/a"
  whole = metrics["all"]
  at_5 = lambda group: ("n/a" if math.isnan(group.get("recall_at_5pct_fa", math.nan))
                        else f"{group['recall_at_5pct_fa']:.3f}")
  return (f"{at_5(whole)} ({at_5(metrics['centred'])} / {at_5(metrics['offset'])}); "
          f"argmax {whole['keyword_recall']:.3f}, {whole['false_accepts']:.1%} "
          f"({whole['windows']} clips)")


def table(rows: List[dict]) -> str:
  """The rows as a Markdown table."""
  header = ["task", "model", "architecture", "parameters", "test speakers (Keras)",
            "robustness set (TFLite): keyword recall at 5% false accepts (centred / offset); "
            "argmax: recall, false accepts",
            "TFLite file", "size (KB)", "parity clips: Keras -> TFLite", "max logit error",
            "latency / clip (ms, 1 thread)"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    examples = "" if r["test_examples"] is None else f" ({r['test_examples']} clips)"
    lines.append("| " + " | ".join([
        r["task"], r["model"], r["architecture"], f"{r['parameters']:,}",
        f"{r['metric']} {r['test']:.4f}{examples}", _robust_cell(r["robustness"]),
        f"{r['file']} ({r['file_format']})",
        f"{r['size_bytes'] / 1024:.0f}",
        f"{r['parity_keras']:.4f} -> {r['parity_tflite']:.4f} ({r['parity_examples']} clips)",
        f"{r['max_abs_logit_error']:.2g}",
        "n/a" if r["latency_ms"] is None else f"{r['latency_ms']:.2f}"]) + " |")
  return "\n".join(lines)


def _pretrained_teacher(options: Options, checkpoint: str) -> str:
  """What the teacher is, on the Whisper checkpoint ``checkpoint``."""
  if options.teacher_blocks:
    return (f"the Whisper encoder of {checkpoint}, its top {options.teacher_blocks} "
            "blocks fine-tuned")
  return f"the frozen Whisper encoder of {checkpoint}"


def run_pipeline(options: Options) -> List[dict]:
  """Runs every stage (skipping those whose stamp matches); writes and returns
  the summary rows. PipelineError or StageError when it cannot go on."""
  unknown = [t for t in options.tasks if t not in TEACHER_RECIPES]
  if unknown:
    raise PipelineError(f"unknown task {unknown[0]!r}; tasks are kws and ctc")
  started = time.time()
  runner = Runner(os.path.join(options.workdir, STAMPS_DIR))
  checkpoint = teacher_checkpoint(options)
  if checkpoint:
    print(f"teacher: {_pretrained_teacher(options, checkpoint)}", flush=True)
  else:
    print("teacher: a small Whisper-architecture encoder trained from scratch (for the real "
          "Whisper-base teacher run kws-get-whisper-base --out_dir="
          f"{os.path.join(options.workdir, WHISPER_BASE_DIR)} first)", flush=True)
  data = data_stages(options)
  for stage in data.values():
    runner.run(stage)
  rows = []
  for task in options.tasks:
    records_stage = data[f"records {task}"]
    stages = model_stages(options, task, records_stage, checkpoint)
    for stage in stages.values():
      runner.run(stage)
    trained = {name: s for name, s in stages.items() if name != "guidance"}
    evaluation = evaluate_stage(task, trained, records_stage)
    runner.run(evaluation)
    evaluations = {name: records.read_json(os.path.join(path, "results.json"))
                   for name, path in zip(trained, evaluation.outputs)}
    cards = {}
    for name, model in trained.items():
      export = export_stage(options, task, name, model, records_stage, data["corpus"])
      runner.run(export)
      cards[name] = records.read_json(export.done_files[0])
    robust = None
    if task == "kws":
      robustness_set = robustness_stage(options)
      runner.run(robustness_set)
      robust = score_robustness(options, cards, robustness_set.outputs[0])
    rows += summary(options, task, checkpoint, {n: s.outputs[0] for n, s in trained.items()},
                    evaluations, cards, robust)
  text = table(rows)
  teacher = (_pretrained_teacher(options, checkpoint) if checkpoint else
             "a Whisper-architecture encoder trained from scratch")
  elapsed = time.time() - started
  timings = runner.timings
  workdir_robustness = os.path.join(options.workdir, "robustness")
  report = (f"Teacher: {teacher}. Synthetic espeak-ng speech, {options.test_speakers} test "
            f"speakers held out of training; the kws robustness set ({workdir_robustness}) "
            "has voices, speaking rates and sentences no training uses, under noise, "
            "reverberation, telephone and level changes, keywords centred or moved by up "
            f"to 300 ms. Wall time of this run {elapsed / 60:.1f} min on "
            f"{os.cpu_count()} cores (stages run now: "
            + (", ".join(f"{k} {v:.0f} s" for k, v in timings.items()) or "none") + ").\n\n"
            + text + "\n")
  records.write_json(os.path.join(options.workdir, "results.json"),
                     {"teacher": teacher, "rows": rows, "seconds": elapsed, "timings": timings})
  with open(os.path.join(options.workdir, "results.md"), "w", encoding="utf-8") as f:
    f.write(report)
  print("\n" + report, flush=True)
  return rows


FLAGS = flags.FLAGS
_DEFAULTS = Options()
flags.DEFINE_string("workdir", _DEFAULTS.workdir, "Where every stage writes.")
flags.DEFINE_integer("speakers", _DEFAULTS.speakers, "Synthetic speakers in all.")
flags.DEFINE_integer("test_speakers", _DEFAULTS.test_speakers,
                     "Of which held out for the test split.")
flags.DEFINE_integer("utterances_per_speaker", _DEFAULTS.utterances_per_speaker,
                     "Utterances per synthetic speaker.")
flags.DEFINE_integer("seed", _DEFAULTS.seed, "Seed of the synthetic corpus.")
flags.DEFINE_integer("cores", _DEFAULTS.cores, "Worker processes of the data stages.")
flags.DEFINE_list("tasks", list(_DEFAULTS.tasks), "kws and/or ctc.")
flags.DEFINE_string("teacher", _DEFAULTS.teacher, "auto (<workdir>/models/whisper-base when "
                    "present, else from scratch), scratch, or a Whisper checkpoint directory "
                    "(Hugging Face PhoWhisper or CTranslate2) whose frozen encoder the teacher "
                    "uses.")
flags.DEFINE_integer("teacher_blocks", _DEFAULTS.teacher_blocks, "A pretrained teacher's top "
                     "encoder blocks fine-tuned with its head; 0 keeps the encoder frozen.",
                     lower_bound=0)
flags.DEFINE_integer("teacher_steps", _DEFAULTS.teacher_steps, "Training steps of the teacher.")
flags.DEFINE_integer("student_steps", _DEFAULTS.student_steps,
                     "Training steps of each student.")
flags.DEFINE_integer("quantize_bits", _DEFAULTS.quantize_bits,
                     "Bits per weight of the quantized-distilled student.")
flags.DEFINE_integer("num_parity", _DEFAULTS.num_parity,
                     "Test clips of each export's Keras-vs-TFLite parity check.")
flags.DEFINE_enum("voices", _DEFAULTS.voices, ["demo", "varied"], "Voices of the corpus "
                  "(kws-synthesize-corpus --voices).")
flags.DEFINE_enum("texts", _DEFAULTS.texts, ["lexicon", "gettext_train", "mixed"],
                  "Sentences of the corpus (kws-synthesize-corpus --texts).")
flags.DEFINE_bool("augment", _DEFAULTS.augment, "kws: train on waveforms augmented on the "
                  "fly and distil from the teacher's logits for the same views.")
flags.DEFINE_integer("views", _DEFAULTS.views, "kws with --augment: augmented views per clip "
                     "in the teacher's guidance.")
flags.DEFINE_integer("robustness_speakers", _DEFAULTS.robustness_speakers,
                     "Held-out speakers of the kws robustness set.")
flags.DEFINE_integer("robustness_utterances", _DEFAULTS.robustness_utterances,
                     "Utterances per speaker of the kws robustness set.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  options = Options(
      workdir=FLAGS.workdir, speakers=FLAGS.speakers, test_speakers=FLAGS.test_speakers,
      utterances_per_speaker=FLAGS.utterances_per_speaker, seed=FLAGS.seed, cores=FLAGS.cores,
      tasks=tuple(FLAGS.tasks), teacher=FLAGS.teacher, teacher_blocks=FLAGS.teacher_blocks,
      teacher_steps=FLAGS.teacher_steps,
      student_steps=FLAGS.student_steps, quantize_bits=FLAGS.quantize_bits,
      num_parity=FLAGS.num_parity, robustness_speakers=FLAGS.robustness_speakers,
      robustness_utterances=FLAGS.robustness_utterances, voices=FLAGS.voices, texts=FLAGS.texts,
      augment=FLAGS.augment, views=FLAGS.views)
  try:
    run_pipeline(options)
  except (PipelineError, StageError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(f"summary: {os.path.join(FLAGS.workdir, 'results.md')}")
  return 0


def run():
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
