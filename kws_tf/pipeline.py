"""The main job, end to end, as a chain of resumable stages.

For each task (``kws`` by default; ``ctc`` too with ``tasks=("kws", "ctc")``)::

  corpus    data_prep.synthesize_corpus    <workdir>/corpus (VIVOS layout + CTM; varied
                                            voices, grammar and gettext sentences)
  records   data_prep.create_tfrecords     <workdir>/records/<task> (logmel + mfcc; kws
                                            also raw clips with 0.5 s of context)
  teacher   kws_tf.bin.train (role=teacher) <workdir>/models/<task>/teacher
  guidance  data_prep.create_guidance       <workdir>/guidance/<task> (logits; kws: of
                                            ``views`` augmented views per clip)
  students  kws_tf.bin.train                <workdir>/models/<task>/{standard,distill,
                                            quantized_distill}
  evaluate  kws_tf.bin.evaluate             <model dir>/eval/test/
  export    kws_tf.bin.export_tflite        <workdir>/export/<task>/<model>/ (int8 TFLite
                                            with the front end inside + model card)
  robustness data_prep.robustness_set      <workdir>/robustness (kws: held-out voices,
                                            rates, texts and conditions), every
                                            exported file scored on it

With ``augment`` (the default) the kws teacher and students train on
waveforms augmented on the fly (``kws_tf.augment``), and the students distil
from the teacher's logits for the very views they see.

Then a table (``<workdir>/results.md`` and ``results.json``): each model's
parameters, file size, test accuracy (or CER) on the test speakers, keyword
recall and false accepts of the exported file on the robustness set, and its
single-thread latency per clip.

Every stage is a separate program whose command is printed; a stage whose
outputs are complete is skipped (a training run with other settings in the
same folder is refused by the trainer), so re-running the same command after a
kill finishes the job.

The teacher is a Whisper encoder with a KWS (or CTC) head: on top of the
frozen encoder of ``teacher`` when that is a Whisper checkpoint directory
(Hugging Face PhoWhisper, or CTranslate2 such as ``kws-get-whisper-base``'s),
else trained from scratch with a small Whisper-architecture config.
"""
import dataclasses
import os
import shlex
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence

from kws_tf import inference, records
from kws_tf.evaluation import robustness

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(REPO, "configs")
TEACHER_CONFIGS = {"kws": "teacher_kws.yaml", "ctc": "teacher_ctc.yaml"}
# Recipes for a head on a frozen pretrained encoder (with a checkpoint).
PRETRAINED_TEACHER_CONFIGS = {"kws": "teacher_kws_whisper.yaml", "ctc": "teacher_ctc_whisper.yaml"}
STUDENT_CONFIGS = {"kws": "kws_small.yaml", "ctc": "ctc_small.yaml"}
STUDENT_MODES = ("standard", "distill", "quantized_distill")
WHISPER_BASE_DIR = os.path.join("models", "whisper-base")
# The kws student's MFCC front end, sized for a phone: 20 ms windows and hop
# (a 320-point DFT, exported as a folded matrix product, 51 frames per 1 s
# clip) and mel bands up to 4 kHz (81 DFT bins), for an int8 TFLite file under
# 300 KB (sizes and times: benchmarks/README.md, latency section).
KWS_STUDENT_FEATURES = ("mfcc.frame_length=320", "mfcc.fft_length=320",
                        "mfcc.frame_step=320", "mfcc.upper_edge_hertz=4000")


class PipelineError(RuntimeError):
  """A stage failed or the options cannot work (the message says what to do)."""


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
  teacher_steps: int = 400
  student_steps: int = 1500
  quantize_bits: int = 4
  num_parity: int = 200
  voices: str = "varied"
  texts: str = "mixed"
  augment: bool = True
  views: int = 2
  robustness_speakers: int = 6
  robustness_utterances: int = 20


def quote(command: List[str]) -> str:
  """``command`` as one shell-quoted line."""
  return " ".join(shlex.quote(c) for c in command)


def run_stage(name: str, command: List[str], timings: Dict[str, float]) -> None:
  """Runs ``command`` from the repository root, printing it and its wall time.

  Records the seconds in ``timings[name]``; PipelineError if it fails.
  """
  print(f"== {name}: {quote(command)}", flush=True)
  started = time.time()
  result = subprocess.run(command, cwd=REPO)
  if result.returncode != 0:
    raise PipelineError(f"stage {name} failed (exit {result.returncode}); fix the cause and "
                        "run the same command again: finished work is kept")
  timings[name] = time.time() - started
  print(f"== {name}: done in {timings[name]:.0f} s", flush=True)


def _stage(name: str, module: str, args: List[str], timings: Dict[str, float]) -> None:
  run_stage(name, [sys.executable, "-m", module] + args, timings)


def _skip(name: str, path: str) -> bool:
  if os.path.exists(path):
    print(f"== {name}: complete ({path})", flush=True)
    return True
  return False


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


def _train(name: str, config: str, model_dir: str, data_dir: str, overrides: List[str],
           timings: Dict[str, float], mode: Optional[str] = None,
           guidance_dir: Optional[str] = None) -> None:
  if _skip(name, os.path.join(model_dir, "results.json")):
    return
  args = [f"--config={os.path.join(CONFIGS, config)}", f"--model_dir={model_dir}",
          f"--data_dir={data_dir}"] + [f"--override={o}" for o in overrides]
  if mode:
    args.append(f"--mode={mode}")
  if guidance_dir:
    args.append(f"--guidance_dir={guidance_dir}")
  _stage(name, "kws_tf.bin.train", args, timings)


def _data(options: Options, timings: Dict[str, float]) -> str:
  corpus = os.path.join(options.workdir, "corpus")
  # synthesize_corpus skips the speakers it has finished.
  _stage("corpus", "data_prep.synthesize_corpus", [
      f"--out_dir={corpus}", f"--speakers={options.speakers}",
      f"--test_speakers={options.test_speakers}",
      f"--utterances_per_speaker={options.utterances_per_speaker}",
      f"--seed={options.seed}", f"--cores={options.cores}", f"--voices={options.voices}",
      f"--texts={options.texts}"], timings)
  for task in options.tasks:
    out = os.path.join(options.workdir, "records", task)
    if _skip(f"records ({task})", os.path.join(out, records.METADATA_FILE)):
      continue
    args = [f"--data_dir={corpus}", "--corpus=vivos", f"--out_dir={out}",
            "--splits=train,test", f"--task={task}", f"--cores={options.cores}"]
    if task == "ctc":
      args.append("--formats=logmel,mfcc")
    else:
      # raw: the clips with context that waveform augmentation reads.
      args += ["--formats=raw,logmel,mfcc",
               f"--alignments={os.path.join(corpus, '*', 'alignments.ctm')}",
               f"--feature_params={','.join(KWS_STUDENT_FEATURES)}"]
    _stage(f"records ({task})", "data_prep.create_tfrecords", args, timings)
  return corpus


def _models(options: Options, task: str, checkpoint: Optional[str],
            timings: Dict[str, float]) -> Dict[str, str]:
  """Trains the teacher and the students of ``task``; returns name -> model dir."""
  data_dir = os.path.join(options.workdir, "records", task)
  models = os.path.join(options.workdir, "models", task)
  dirs = {"teacher": os.path.join(models, "teacher")}
  augment = options.augment and task == "kws"
  augmented = ["augment.enabled=true"] if augment else []
  # A Whisper-sized teacher validates twice: each validation runs it over the held-out clips.
  teacher_overrides = _train_steps(options.teacher_steps, validations=2) + augmented
  recipe = TEACHER_CONFIGS[task]
  if checkpoint:
    teacher_overrides.append(f"model.params.checkpoint={checkpoint}")
    recipe = PRETRAINED_TEACHER_CONFIGS[task]
  _train(f"teacher ({task})", recipe, dirs["teacher"], data_dir, teacher_overrides, timings)
  guidance_dir = os.path.join(options.workdir, "guidance", task)
  if not _skip(f"guidance ({task})", os.path.join(guidance_dir, records.METADATA_FILE)):
    views = []
    if augment:  # the teacher's logits for the views the students will see
      views = [f"--views={options.views}", "--nofeatures",
               f"--augment_recipe={os.path.join(CONFIGS, STUDENT_CONFIGS[task])}",
               "--override=augment.enabled=true"]
    _stage(f"guidance ({task})", "data_prep.create_guidance", [
        f"--teacher_dir={dirs['teacher']}", f"--data_dir={data_dir}",
        f"--out_dir={guidance_dir}", "--guidance=logits", "--splits=train"] + views, timings)
  for mode in STUDENT_MODES:
    dirs[mode] = os.path.join(models, mode)
    overrides = _train_steps(options.student_steps) + augmented
    if mode == "quantized_distill":
      overrides.append(f"quantization.bits={options.quantize_bits}")
    _train(f"student {mode} ({task})", STUDENT_CONFIGS[task], dirs[mode], data_dir, overrides,
           timings, mode=mode, guidance_dir=None if mode == "standard" else guidance_dir)
  return dirs


def _evaluate(task: str, dirs: Dict[str, str], data_dir: str,
              timings: Dict[str, float]) -> Dict[str, dict]:
  results_paths = {name: os.path.join(d, "eval", "test", "results.json")
                   for name, d in dirs.items()}
  if not all(os.path.exists(p) for p in results_paths.values()):
    _stage(f"evaluate ({task})", "kws_tf.bin.evaluate", [
        f"--model_dirs={','.join(dirs.values())}", f"--data_dir={data_dir}", "--split=test"],
        timings)
  else:
    print(f"== evaluate ({task}): complete", flush=True)
  return {name: records.read_json(path) for name, path in results_paths.items()}


def _export(options: Options, task: str, dirs: Dict[str, str], data_dir: str, corpus: str,
            timings: Dict[str, float]) -> Dict[str, dict]:
  """int8 TFLite of each student (float32 of the teacher); name -> model card."""
  cards = {}
  for name, model_dir in dirs.items():
    out = os.path.join(options.workdir, "export", task, name)
    fmt = "float32" if name == "teacher" else "int8"
    card = os.path.join(out, f"model_{fmt}.json")
    if not _skip(f"export {name} ({task})", card):
      _stage(f"export {name} ({task})", "kws_tf.bin.export_tflite", [
          f"--model_dir={model_dir}", f"--data_dir={data_dir}", f"--out_dir={out}",
          f"--formats={fmt}", f"--num_parity={options.num_parity}", f"--audio_dir={corpus}"],
          timings)
    cards[name] = records.read_json(card)
  return cards


def _robustness(options: Options, cards: Dict[str, dict], timings: Dict[str, float]
                ) -> Dict[str, dict]:
  """Each exported kws file on a small robustness set (held-out voices, rates and
  texts under noise, reverberation, telephone and level changes); name -> metrics."""
  set_dir = os.path.join(options.workdir, "robustness")
  if not _skip("robustness set", os.path.join(set_dir, robustness.MANIFEST)):
    _stage("robustness set", "data_prep.robustness_set", [
        f"--out_dir={set_dir}", f"--speakers={options.robustness_speakers}",
        f"--utterances_per_speaker={options.robustness_utterances}", f"--seed={options.seed}",
        f"--cores={options.cores}"], timings)
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
  if metrics is None:
    return "n/a"
  whole = metrics["all"]
  return (f"{whole['keyword_recall']:.3f}, {whole['false_accepts']:.3f} "
          f"(centred {metrics['centred']['keyword_recall']:.3f}, offset "
          f"{metrics['offset']['keyword_recall']:.3f}; {whole['windows']} clips)")


def table(rows: List[dict]) -> str:
  """The rows as a Markdown table."""
  header = ["task", "model", "architecture", "parameters", "test speakers (Keras)",
            "robustness set: keyword recall, false accepts (TFLite)",
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


def run(options: Options) -> List[dict]:
  """Runs every stage (skipping finished ones); writes and returns the summary rows."""
  unknown = [t for t in options.tasks if t not in TEACHER_CONFIGS]
  if unknown:
    raise PipelineError(f"unknown task {unknown[0]!r}; tasks are kws and ctc")
  started = time.time()
  timings: Dict[str, float] = {}
  checkpoint = teacher_checkpoint(options)
  if checkpoint:
    print(f"teacher: the frozen Whisper encoder of {checkpoint}", flush=True)
  else:
    print("teacher: a small Whisper-architecture encoder trained from scratch (for the real "
          "Whisper-base teacher run kws-get-whisper-base --out_dir="
          f"{os.path.join(options.workdir, WHISPER_BASE_DIR)} first)", flush=True)
  corpus = _data(options, timings)
  rows = []
  for task in options.tasks:
    data_dir = os.path.join(options.workdir, "records", task)
    dirs = _models(options, task, checkpoint, timings)
    evaluations = _evaluate(task, dirs, data_dir, timings)
    cards = _export(options, task, dirs, data_dir, corpus, timings)
    robust = _robustness(options, cards, timings) if task == "kws" else None
    rows += summary(options, task, checkpoint, dirs, evaluations, cards, robust)
  text = table(rows)
  teacher = (f"the frozen Whisper encoder of {checkpoint}" if checkpoint else
             "a Whisper-architecture encoder trained from scratch")
  elapsed = time.time() - started
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
