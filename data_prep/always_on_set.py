r"""Builds an always-on test set: long recordings with keywords at known times.

  kws-make-always-on-set --corpus_dir=workdir/corpus --out_dir=workdir/always_on \
      --conditions=clean,noise,reverb,telephone

For every speaker of ``--split`` of a VIVOS-layout corpus whose split has a
word CTM (``<split>/alignments.ctm``, as kws-synthesize-corpus and kws-align
write it), the speaker's aligned utterances (sorted by id) are concatenated
into one recording, with a pause of ``--gap_seconds`` (drawn uniformly from
the range) before each and after the last. The keyword occurrences are the
CTM's words that normalise to a keyword (``kws_tf.text.KEYWORDS``), moved by
the utterance's start in the recording; every other word and the pauses are
keyword-free audio, where any detection is a false alarm.

Each recording is written once per condition of ``--conditions``, each one
applied to the whole recording by ``data_prep.robustness_set.apply_condition``
(clean; noise: hum, babble or fan at 5-25 dB SNR against the speech's power;
reverberation; both; a telephone channel; a level change), its parameters
drawn with ``--seed``. Babble is the other speakers' clean recordings, tiled
to the length.

Writes ``<out_dir>/recordings/<speaker>-<condition>.wav`` (16-bit PCM at 16
kHz), ``<out_dir>/manifest.jsonl`` (one recording a line: ``id``, ``path``,
``speaker``, ``seconds``, ``condition``, ``noise``, ``snr_db``, ``rt60``, and
``keywords``: ``[{"keyword", "start", "end"}]`` in seconds) and
``<out_dir>/settings.json``. ``kws-evaluate --always_on_model`` scores a
streaming kws file on it (``kws_tf.evaluation.always_on``).
"""
import json
import os
from typing import Dict, List, Sequence, Tuple

import kws_tf  # noqa: F401  (sets TF_USE_LEGACY_KERAS; TensorFlow itself is not used)
import numpy as np
from absl import app, flags

from data_prep import corpora, robustness_set
from kws_tf import audio, cli, text
from kws_tf.evaluation.always_on import MANIFEST

FLAGS = flags.FLAGS
SAMPLE_RATE = robustness_set.SAMPLE_RATE
SETTINGS = "settings.json"


def concatenate(rng: np.random.Generator, waveforms: Sequence[np.ndarray],
                alignments: Sequence[Sequence[corpora.Word]], gap_seconds: Tuple[float, float],
                keywords: Sequence[str]) -> Tuple[np.ndarray, List[dict], float]:
  """One recording of ``waveforms`` (float ``[samples]`` at ``SAMPLE_RATE``) with a pause
  drawn from ``gap_seconds`` before each and after the last.

  Returns the recording (float64 ``[samples]``), its keyword occurrences
  (``{"keyword", "start", "end"}``, seconds in the recording, from the words of
  ``alignments`` that normalise to one of ``keywords``) and the mean power of
  the utterances' samples (the speech level noise is mixed against).
  """
  pieces, occurrences = [], []
  position, power, speech = 0, 0.0, 0
  for waveform, words in zip(waveforms, alignments):
    gap = int(round(rng.uniform(*gap_seconds) * SAMPLE_RATE))
    pieces += [np.zeros(gap), np.asarray(waveform, np.float64)]
    position += gap
    for word in words:
      keyword = text.normalize(word.word)
      if keyword in keywords:
        occurrences.append({"keyword": keyword,
                            "start": round(position / SAMPLE_RATE + word.start, 3),
                            "end": round(position / SAMPLE_RATE + word.end, 3)})
    position += len(waveform)
    power += float(np.sum(np.square(waveform, dtype=np.float64)))
    speech += len(waveform)
  pieces.append(np.zeros(int(round(rng.uniform(*gap_seconds) * SAMPLE_RATE))))
  return np.concatenate(pieces), occurrences, power / max(speech, 1)


def speaker_utterances(corpus_dir: str, split: str) -> Dict[str, List[Tuple[corpora.Utterance,
                                                                          List[corpora.Word]]]]:
  """Speaker -> their readable, aligned utterances of ``split`` with their words, by id."""
  ctm = os.path.join(corpus_dir, split, "alignments.ctm")
  if not os.path.exists(ctm):
    raise FileNotFoundError(f"{ctm} not found: the recordings' keyword times come from the "
                            "split's word CTM (kws-align writes one)")
  alignments = corpora.read_ctm([ctm])
  out: Dict[str, list] = {}
  for utt in corpora.read_corpus("vivos", corpus_dir, [split]):
    if utt.problem is None and alignments.get(utt.id):
      out.setdefault(utt.speaker, []).append((utt, alignments[utt.id]))
  if not out:
    raise ValueError(f"{corpus_dir}: no utterance of split {split!r} is readable and in {ctm}")
  return out


def build(out_dir: str, corpus_dir: str, split: str, conditions: Sequence[str],
          gap_seconds: Tuple[float, float], seed: int) -> List[dict]:
  """Writes the recordings; returns the manifest's rows (module docstring)."""
  rng = np.random.default_rng([seed, 20])
  clean = {}
  for speaker, utterances in sorted(speaker_utterances(corpus_dir, split).items()):
    waveforms = [audio.read_audio(utt.audio_path, SAMPLE_RATE) for utt, _ in utterances]
    clean[speaker] = concatenate(rng, waveforms, [words for _, words in utterances],
                                 gap_seconds, text.KEYWORDS)
  os.makedirs(os.path.join(out_dir, "recordings"), exist_ok=True)
  rows = []
  for condition in conditions:
    for speaker, (recording, occurrences, reference) in clean.items():
      others = [r for s, (r, _, _) in clean.items() if s != speaker] or [recording]
      pool = [np.resize(r, len(recording)) for r in others]
      x, info = robustness_set.apply_condition(rng, recording, reference, pool, condition)
      name = f"{speaker}-{condition}"
      path = os.path.join("recordings", name + ".wav")
      audio.write_wav(os.path.join(out_dir, path), x.astype(np.float32), SAMPLE_RATE)
      rows.append({"id": name, "path": path, "speaker": speaker,
                   "seconds": len(x) / SAMPLE_RATE, **info, "keywords": occurrences})
  return rows


def _define_flags() -> None:
  """The binary's flags; defined when it runs (importing the module for its
  functions claims no flag names)."""
  flags.DEFINE_string("out_dir", None, "Output folder.")
  flags.DEFINE_string("corpus_dir", None, "A VIVOS-layout corpus whose --split has "
                      "alignments.ctm (e.g. kws-synthesize-corpus's, or a robustness set's "
                      "corpus/).")
  flags.DEFINE_string("split", "test", "The split whose speakers are recorded.")
  flags.DEFINE_list("conditions", ["clean", "noise", "reverb", "telephone"],
                    "Each recording is written once per condition, applied to the whole "
                    f"recording: {', '.join(robustness_set.CONDITIONS)}.")
  flags.DEFINE_list("gap_seconds", ["0.5", "2.0"], "Pause before each utterance and after "
                    "the last: min,max seconds (drawn uniformly).")
  flags.DEFINE_integer("seed", 0, "Seed of the pauses and of the conditions' parameters.")


def main(argv: List[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.out_dir or not FLAGS.corpus_dir:
    raise app.UsageError("--out_dir and --corpus_dir are required")
  unknown = [c for c in FLAGS.conditions if c not in robustness_set.CONDITIONS]
  if unknown or not FLAGS.conditions:
    raise app.UsageError(f"--conditions: unknown {unknown or 'none given'}; known: "
                         f"{', '.join(robustness_set.CONDITIONS)}")
  try:
    gap = tuple(float(g) for g in FLAGS.gap_seconds)
  except ValueError:
    gap = ()
  if len(gap) != 2 or not 0 <= gap[0] <= gap[1]:
    raise app.UsageError(f"--gap_seconds must be min,max with 0 <= min <= max, got "
                         f"{','.join(FLAGS.gap_seconds)}")
  try:
    rows = build(FLAGS.out_dir, FLAGS.corpus_dir, FLAGS.split, FLAGS.conditions, gap,
                 FLAGS.seed)
  except (FileNotFoundError, ValueError, audio.AudioError) as e:
    raise SystemExit(f"error: {e}") from None
  tmp = os.path.join(FLAGS.out_dir, MANIFEST + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    for row in rows:
      f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")
  os.replace(tmp, os.path.join(FLAGS.out_dir, MANIFEST))
  settings = {"corpus_dir": os.path.abspath(FLAGS.corpus_dir), "split": FLAGS.split,
              "conditions": FLAGS.conditions, "gap_seconds": list(gap), "seed": FLAGS.seed}
  with open(os.path.join(FLAGS.out_dir, SETTINGS + ".tmp"), "w", encoding="utf-8") as f:
    json.dump(settings, f, indent=1)
  os.replace(os.path.join(FLAGS.out_dir, SETTINGS + ".tmp"),
             os.path.join(FLAGS.out_dir, SETTINGS))
  hours = sum(r["seconds"] for r in rows) / 3600
  keywords = sum(len(r["keywords"]) for r in rows)
  print(f"always-on set: {len(rows)} recordings, {hours:.2f} h, {keywords} keyword occurrences "
        f"in {FLAGS.out_dir}")


def run() -> None:
  """Console script ``kws-make-always-on-set``."""
  _define_flags()
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
