r"""Builds a keyword-spotting robustness test set: 1 s windows under conditions no training uses.

  kws-make-robustness-set --out_dir=workdir/robustness --speakers=12 --utterances_per_speaker=30

1. speech: ``data_prep.synthesize_corpus --voices=held_out --texts=gettext_test``
   (espeak-ng variants and speaking rates no training corpus uses, sentences
   of the half of the gettext catalogues no training corpus reads), in
   ``<out_dir>/corpus``; or any VIVOS-layout corpus with a CTM (``--corpus_dir``).
   ``--voices`` and ``--texts`` pick other sets, to tell the factors apart:
   ``held_out_variants`` (the held-out variants at the training rates) or
   ``held_out_rates`` (the training variants at the held-out rates), the
   training voices (``varied``) or texts (``mixed``);
2. windows: for every keyword of the aligned test split, one window centred
   on it and one whose centre is moved by up to ``--max_offset_seconds``
   (keeping the word inside), and as many keyword-free windows;
3. a condition per window, drawn with numpy (independently of
   ``kws_tf.augment``, with other noise and room models): clean; noise
   (``hum``: mains hum with harmonics; ``babble``: 3-6 other utterances of the
   set; ``fan``: noise through random resonances) at 5, 10, 15, 20 or 25 dB
   SNR; reverberation (sparse early reflections and a low-passed diffuse tail,
   RT60 0.3-1.0 s); reverberation plus noise; a telephone channel (resampled
   through 8 kHz by soxr, 8-bit mu-law); a level change (-24 dB, or +12 dB
   with clipping).

Writes ``<out_dir>/clips/<id>.wav`` (16 kHz PCM16, ``--clip_seconds`` long),
``<out_dir>/manifest.jsonl`` (one window a line: ``id``, ``path``, ``label``,
``placement`` centred/offset/negative, ``offset_seconds``, ``condition``,
``noise``, ``snr_db``, ``rt60``) and ``<out_dir>/settings.json``.

4. utterances, for character recognition: every test utterance whole, under
   a condition drawn in the same way (its own random stream, so the windows
   do not change), as a VIVOS-layout corpus ``<out_dir>/utterances``
   (``test/prompts.txt``, ``test/waves/<speaker>/<id>.wav``; ``kws-create-tfrecords
   --task=ctc --data_dir=<out_dir>/utterances`` reads it) with
   ``utterances.jsonl`` (``id`` and the condition's fields, as the manifest's);
   made for an existing set that lacks it.

The same flags give the same set. Every clip is synthetic speech.
"""
import json
import os
import subprocess
import sys
from typing import Dict, List, Optional, Sequence

import kws_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS; TensorFlow itself is not used)
import numpy as np
import scipy.signal
import soundfile
import soxr
import tqdm
from absl import app, flags

from kws_tf import cli

from data_prep import corpora
from kws_tf import audio, text
from kws_tf.evaluation.robustness import MANIFEST

FLAGS = flags.FLAGS
SAMPLE_RATE = 16000
CONDITIONS = ("clean", "noise", "reverb", "reverb_noise", "telephone", "gain")
CONDITION_WEIGHTS = (0.2, 0.3, 0.15, 0.1, 0.15, 0.1)
NOISES = ("hum", "babble", "fan")
SNR_BINS_DB = (5, 10, 15, 20, 25)
RT60_SECONDS = (0.3, 1.0)
GAINS_DB = (-24.0, 12.0)
SETTINGS = "settings.json"
UTTERANCES = "utterances"  # the folder of the utterances under conditions
UTTERANCE_MANIFEST = "utterances.jsonl"


def hum(rng: np.random.Generator, samples: int) -> np.ndarray:
  """Mains hum: a 50 or 60 Hz fundamental with decaying random harmonics, plus
  broadband noise 30 dB down."""
  t = np.arange(samples) / SAMPLE_RATE
  base = rng.choice([50.0, 60.0])
  out = np.zeros(samples)
  for k in range(1, 12):
    out += rng.uniform(0.2, 1.0) / k * np.sin(2 * np.pi * base * k * t + rng.uniform(0, 6.3))
  out /= np.sqrt(np.mean(out ** 2))
  return out + 10 ** (-30 / 20) * rng.standard_normal(samples)


def fan(rng: np.random.Generator, samples: int) -> np.ndarray:
  """White noise through 2-4 random resonances (100-4000 Hz) on a low-frequency tilt."""
  spectrum = np.fft.rfft(rng.standard_normal(samples))
  hertz = np.fft.rfftfreq(samples, 1 / SAMPLE_RATE)
  shape = 1.0 / (1.0 + hertz / 500.0)
  for _ in range(rng.integers(2, 5)):
    centre, width = rng.uniform(100, 4000), rng.uniform(30, 300)
    shape += rng.uniform(2, 8) * np.exp(-0.5 * ((hertz - centre) / width) ** 2)
  return np.fft.irfft(spectrum * shape, n=samples)


def room_impulse_response(rng: np.random.Generator, rt60: float) -> np.ndarray:
  """Direct path 1, 10-30 early reflections in 1-50 ms, then a diffuse tail that
  decays 60 dB in ``rt60`` seconds, low-passed (air and walls absorb highs)."""
  length = int(rt60 * SAMPLE_RATE)
  rir = np.zeros(length)
  rir[0] = 1.0
  for _ in range(rng.integers(10, 31)):
    delay = int(rng.uniform(0.001, 0.05) * SAMPLE_RATE)
    rir[delay] += rng.choice([-1, 1]) * rng.uniform(0.1, 0.6) * np.exp(-delay / SAMPLE_RATE / 0.05)
  t = np.arange(length) / SAMPLE_RATE
  tail = rng.standard_normal(length) * 10 ** (-3 * t / rt60) * 0.3
  tail[:int(0.01 * SAMPLE_RATE)] = 0
  kernel = np.hanning(9)
  rir += np.convolve(tail, kernel / kernel.sum(), mode="same")
  return rir


def mu_law(x: np.ndarray, mu: float = 255.0) -> np.ndarray:
  """8-bit mu-law companding and expansion of ``x`` in [-1, 1]."""
  y = np.sign(x) * np.log1p(mu * np.abs(x)) / np.log1p(mu)
  y = np.round((y + 1) / 2 * 255) / 255 * 2 - 1
  return np.sign(y) * ((1 + mu) ** np.abs(y) - 1) / mu


def mix(signal: np.ndarray, noise: np.ndarray, snr_db: float, reference: float) -> np.ndarray:
  """``signal + noise`` scaled so that ``reference`` (speech power) / noise power is ``snr_db``."""
  scale = np.sqrt(reference / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
  return signal + scale * noise


def apply_condition(rng: np.random.Generator, window: np.ndarray, reference: float,
                    babble_pool: Sequence[np.ndarray],
                    condition: Optional[str] = None) -> (np.ndarray, Dict):
  """A condition applied to float ``window`` [samples], its parameters drawn by
  ``rng``; returns the window (float, in [-1, 1]) and its description.

  ``condition``: one of ``CONDITIONS``; None: drawn by ``rng`` with
  ``CONDITION_WEIGHTS``. Babble takes ``len(window)`` samples of pool entries,
  which must be at least that long.
  """
  if condition is None:
    condition = CONDITIONS[rng.choice(len(CONDITIONS), p=CONDITION_WEIGHTS)]
  elif condition not in CONDITIONS:
    raise ValueError(f"unknown condition {condition!r}; known: {', '.join(CONDITIONS)}")
  info = {"condition": condition, "noise": None, "snr_db": None, "rt60": None}
  x = window.astype(np.float64)
  if condition in ("reverb", "reverb_noise"):
    rt60 = float(np.round(rng.uniform(*RT60_SECONDS), 2))
    wet = scipy.signal.fftconvolve(x, room_impulse_response(rng, rt60))[:len(x)]
    x = wet * np.sqrt(np.mean(x ** 2) / max(np.mean(wet ** 2), 1e-12))
    info["rt60"] = rt60
  if condition in ("noise", "reverb_noise"):
    kind = NOISES[rng.integers(len(NOISES))]
    if kind == "hum":
      noise = hum(rng, len(x))
    elif kind == "fan":
      noise = fan(rng, len(x))
    else:
      noise = np.zeros(len(x))
      for _ in range(rng.integers(3, 7)):
        source = babble_pool[rng.integers(len(babble_pool))]
        start = rng.integers(0, len(source) - len(x) + 1)
        noise += source[start:start + len(x)]
    snr = int(rng.choice(SNR_BINS_DB))
    x = mix(x, noise, snr, reference)
    info.update(noise=kind, snr_db=snr)
  if condition == "telephone":
    narrow = soxr.resample(x, SAMPLE_RATE, 8000, quality="HQ")
    narrow = mu_law(np.clip(narrow, -1, 1))
    x = soxr.resample(narrow, 8000, SAMPLE_RATE, quality="HQ")[:len(x)]
    x = np.pad(x, (0, len(window) - len(x)))
  if condition == "gain":
    gain = float(rng.choice(GAINS_DB))
    x = x * 10 ** (gain / 20)
    info["gain_db"] = gain
  return np.clip(x, -1.0, 1.0), info


def plan_windows(rng: np.random.Generator, utterances: List[corpora.Utterance],
                 alignments: Dict[str, List[corpora.Word]], keywords: Sequence[str],
                 clip_seconds: float, max_offset: float) -> List[dict]:
  """Window starts (seconds) per utterance: a centred and an offset window per keyword,
  then as many keyword-free windows, drawn among the utterances' gaps."""
  classes = {k: i for i, k in enumerate(keywords)}
  windows, free = [], []
  for utt in utterances:
    words = alignments.get(utt.id) or []
    spans = [(w.start, w.end) for w in words if text.normalize(w.word) in classes]
    for index, word in enumerate(words):
      key = text.normalize(word.word)
      if key not in classes:
        continue
      centre = (word.start + word.end) / 2
      slack = max(min(max_offset, (clip_seconds - (word.end - word.start)) / 2), 0.0)
      offset = float(rng.uniform(-slack, slack))
      for placement, shift in (("centred", 0.0), ("offset", offset)):
        windows.append({"utt": utt, "id": f"{utt.id}-p{index:03d}-{placement[0]}",
                        "label": key, "placement": placement,
                        "offset_seconds": round(shift, 3),
                        "start": centre + shift - clip_seconds / 2})
    if words:
      end = max(w.end for w in words)
      for step in range(int(np.floor((end - clip_seconds) / 0.05 + 1e-9)) + 1):
        start = step * 0.05
        if all(start + clip_seconds <= s or start >= e for s, e in spans):
          free.append((utt, round(start, 3)))
  positives = len(windows)
  for i in sorted(rng.choice(len(free), size=min(positives, len(free)), replace=False)):
    utt, start = free[i]
    windows.append({"utt": utt, "id": f"{utt.id}-n{int(start * 1000):06d}",
                    "label": text.NEGATIVE_LABEL, "placement": "negative",
                    "offset_seconds": 0.0, "start": start})
  return sorted(windows, key=lambda w: w["id"])


def synthesize(out_dir: str, speakers: int, utterances: int, seed: int, cores,
               voices: str = "held_out", texts: str = "gettext_test") -> str:
  corpus = os.path.join(out_dir, "corpus")
  command = [sys.executable, "-m", "data_prep.synthesize_corpus", f"--out_dir={corpus}",
             f"--speakers={speakers}", f"--test_speakers={speakers}",
             f"--utterances_per_speaker={utterances}", f"--seed={seed}",
             f"--voices={voices}", f"--texts={texts}"]
  if cores:
    command.append(f"--cores={cores}")
  subprocess.run(command, check=True)
  return corpus


def build(out_dir: str, corpus_dir: str, seed: int, clip_seconds: float,
          max_offset: float) -> List[dict]:
  """Writes the clips and the manifest; returns the manifest's rows."""
  utterances = [u for u in corpora.read_corpus("vivos", corpus_dir, ["test"])
                if u.problem is None]
  alignments = corpora.read_ctm([os.path.join(corpus_dir, "test", "alignments.ctm")])
  rng = np.random.default_rng([seed, 17])
  windows = plan_windows(rng, utterances, alignments, text.KEYWORDS, clip_seconds, max_offset)
  clip = int(round(clip_seconds * SAMPLE_RATE))
  cache: Dict[str, np.ndarray] = {}

  def waveform(utt):
    if utt.id not in cache:
      cache[utt.id] = audio.read_audio(utt.audio_path, SAMPLE_RATE).astype(np.float64)
    return cache[utt.id]

  by_speaker: Dict[str, List[corpora.Utterance]] = {}
  for utt in utterances:
    by_speaker.setdefault(utt.id.split("_")[0], []).append(utt)
  os.makedirs(os.path.join(out_dir, "clips"), exist_ok=True)
  rows = []
  for window in tqdm.tqdm(windows, unit="clip", desc="robustness set"):
    utt = window["utt"]
    speech = waveform(utt)
    reference = float(np.mean(speech ** 2))
    others = [u for s, us in by_speaker.items() if s != utt.id.split("_")[0] for u in us]
    pool = [waveform(others[i]) for i in rng.choice(len(others), size=min(6, len(others)),
                                                    replace=False)] if others else [speech]
    pool = [p for p in pool if len(p) > clip] or [np.tile(speech, 1 + clip // len(speech))]
    piece = audio.cut_clip(speech, window["start"], clip, SAMPLE_RATE)
    noisy, info = apply_condition(rng, piece, reference, pool)
    path = os.path.join("clips", window["id"] + ".wav")
    tmp = os.path.join(out_dir, path + ".tmp")
    soundfile.write(tmp, np.round(noisy * 32767).astype(np.int16), SAMPLE_RATE,
                    subtype="PCM_16", format="WAV")
    os.replace(tmp, os.path.join(out_dir, path))
    rows.append({"id": window["id"], "path": path, "label": window["label"],
                 "placement": window["placement"],
                 "offset_seconds": window["offset_seconds"], **info})
  return rows


def build_utterances(out_dir: str, corpus_dir: str, seed: int) -> List[dict]:
  """Writes the test utterances under drawn conditions (step 4 of the module) and
  returns their rows; babble comes from other speakers' utterances, repeated to
  the utterance's length when shorter."""
  utterances = [u for u in corpora.read_corpus("vivos", corpus_dir, ["test"])
                if u.problem is None]
  rng = np.random.default_rng([seed, 23])
  waveforms = {u.id: audio.read_audio(u.audio_path, SAMPLE_RATE).astype(np.float64)
               for u in utterances}
  root = os.path.join(out_dir, UTTERANCES)
  split = os.path.join(root, "test")
  rows, prompts = [], []
  for utt in tqdm.tqdm(utterances, unit="utterance", desc="robustness utterances"):
    speech = waveforms[utt.id]
    speaker = utt.id.split("_")[0]
    others = [u.id for u in utterances if u.id.split("_")[0] != speaker] or [utt.id]
    pool = [np.resize(waveforms[others[i]], len(speech))
            for i in rng.choice(len(others), size=min(6, len(others)), replace=False)]
    noisy, info = apply_condition(rng, speech, float(np.mean(speech ** 2)), pool)
    path = os.path.join(split, "waves", speaker, utt.id + ".wav")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    soundfile.write(path + ".tmp", np.round(noisy * 32767).astype(np.int16), SAMPLE_RATE,
                    subtype="PCM_16", format="WAV")
    os.replace(path + ".tmp", path)
    prompts.append(f"{utt.id} {utt.text}\n")
    rows.append({"id": utt.id, **info})
  with open(os.path.join(split, "prompts.txt.tmp"), "w", encoding="utf-8") as f:
    f.writelines(prompts)
  os.replace(os.path.join(split, "prompts.txt.tmp"), os.path.join(split, "prompts.txt"))
  return rows


def _write_jsonl(path: str, rows: Sequence[dict]) -> None:
  with open(path + ".tmp", "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
  os.replace(path + ".tmp", path)


def _define_flags() -> None:
  """The binary's flags; defined when it runs, so that importing this module for its
  functions (tests, benchmarks) does not claim flag names other binaries use."""
  flags.DEFINE_string("out_dir", None, "Output folder.")
  flags.DEFINE_string("corpus_dir", None, "A VIVOS-layout corpus whose test split has "
                      "alignments.ctm; default: synthesise one in <out_dir>/corpus.")
  flags.DEFINE_integer("speakers", 12, "Held-out synthetic speakers (without --corpus_dir).")
  flags.DEFINE_integer("utterances_per_speaker", 30, "Utterances per synthetic speaker.")
  flags.DEFINE_integer("seed", 0, "Seed of the speech and of the windows and conditions.")
  flags.DEFINE_float("clip_seconds", 1.0, "Window length, seconds.")
  flags.DEFINE_float("max_offset_seconds", 0.3, "Offset windows move the keyword's centre by "
                     "up to this much from the window's centre.")
  flags.DEFINE_integer("cores", None, "Synthesis processes; default: all cores.")
  flags.DEFINE_string("voices", "held_out", "synthesize_corpus --voices of the speech: "
                      "held_out, or held_out_variants / held_out_rates / varied to test one "
                      "factor at a time.")
  flags.DEFINE_string("texts", "gettext_test", "synthesize_corpus --texts of the speech "
                      "(gettext_test; mixed: the training corpora's sources).")


def main(argv: List[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.out_dir:
    raise app.UsageError("--out_dir is required")
  settings = {"corpus_dir": FLAGS.corpus_dir, "speakers": FLAGS.speakers,
              "utterances_per_speaker": FLAGS.utterances_per_speaker, "seed": FLAGS.seed,
              "clip_seconds": FLAGS.clip_seconds, "max_offset_seconds": FLAGS.max_offset_seconds}
  if (FLAGS.voices, FLAGS.texts) != ("held_out", "gettext_test"):
    settings.update(voices=FLAGS.voices, texts=FLAGS.texts)
  settings_path = os.path.join(FLAGS.out_dir, SETTINGS)
  windows_done = False
  if os.path.exists(settings_path) and os.path.exists(os.path.join(FLAGS.out_dir, MANIFEST)):
    with open(settings_path, encoding="utf-8") as f:
      windows_done = json.load(f) == settings
  utterance_manifest = os.path.join(FLAGS.out_dir, UTTERANCE_MANIFEST)
  if windows_done and os.path.exists(utterance_manifest):
    print(f"robustness set complete: {FLAGS.out_dir}")
    return
  os.makedirs(FLAGS.out_dir, exist_ok=True)
  corpus_dir = FLAGS.corpus_dir or synthesize(
      FLAGS.out_dir, FLAGS.speakers, FLAGS.utterances_per_speaker, FLAGS.seed, FLAGS.cores,
      FLAGS.voices, FLAGS.texts)
  if not windows_done:
    if os.path.exists(utterance_manifest):
      os.remove(utterance_manifest)  # of other settings: made again below
    rows = build(FLAGS.out_dir, corpus_dir, FLAGS.seed, FLAGS.clip_seconds,
                 FLAGS.max_offset_seconds)
    _write_jsonl(os.path.join(FLAGS.out_dir, MANIFEST), rows)
    with open(settings_path + ".tmp", "w", encoding="utf-8") as f:
      json.dump(settings, f, indent=1)
    os.replace(settings_path + ".tmp", settings_path)
    counts = {}
    for row in rows:
      counts[row["placement"]] = counts.get(row["placement"], 0) + 1
    print(f"robustness set: {len(rows)} clips in {FLAGS.out_dir} ({counts}); synthetic speech")
  rows = build_utterances(FLAGS.out_dir, corpus_dir, FLAGS.seed)
  _write_jsonl(utterance_manifest, rows)
  counts = {}
  for row in rows:
    counts[row["condition"]] = counts.get(row["condition"], 0) + 1
  print(f"robustness utterances: {len(rows)} in {os.path.join(FLAGS.out_dir, UTTERANCES)} "
        f"({counts}); synthetic speech")


def run() -> None:
  """Console script ``kws-make-robustness-set``."""
  _define_flags()
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
