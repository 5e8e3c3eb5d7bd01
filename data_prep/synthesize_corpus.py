"""Synthesises the embedded default corpus: espeak-ng Vietnamese in the VIVOS layout.

Every speaker is a voice of espeak-ng (regional voice, variant, speaking rate,
pitch, pitch range, volume) drawn from ``--seed``; every utterance is a sentence
of ``data_prep.lexicon``. The output is the VIVOS layout plus word alignments:

  <out>/{train,test}/waves/<SPK>/<SPK>_R<nnn>.wav  16 kHz mono PCM16
  <out>/{train,test}/prompts.txt      "<UTT> <TRANSCRIPT>", upper case, sorted
  <out>/{train,test}/genders.txt      "<SPK> m|f", sorted
  <out>/{train,test}/alignments.ctm   "<UTT> 1 <start s> <duration s> <WORD>"
  <out>/synthesis.json                the settings the corpus was made with
  <out>/.done/<SPK>.json              a finished speaker: its prompts and alignments

Each speaker is synthesised in a fresh process (libespeak-ng's output depends
on its earlier calls in the same process), so the output is byte-identical for
a seed whatever ``--cores`` is. Files are written under a temporary name and
renamed; a re-run with the same flags skips finished speakers. This is
synthetic speech: label every result on it "synthetic".

  python -m data_prep.synthesize_corpus --out_dir=data/vivos_synth
"""
import kws_tf  # noqa: F401  (first: sets TF_USE_LEGACY_KERAS; TensorFlow itself is not used)

import collections
import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue
import shutil
import unicodedata
from typing import Dict, List, Optional, Sequence

import numpy as np
import soundfile
import soxr
import tqdm
from absl import app

from kws_tf import cli
from absl import flags

from data_prep import espeak
from data_prep import lexicon
from data_prep import texts
from kws_tf.text import KEYWORDS

FLAGS = flags.FLAGS
flags.DEFINE_string("out_dir", None, "Output directory (the VIVOS root).")
flags.DEFINE_integer("speakers", 12, "Number of speakers, train and test together.")
flags.DEFINE_integer("test_speakers", 3, "Of which test speakers (disjoint from train).")
flags.DEFINE_integer("utterances_per_speaker", 40, "Utterances per speaker.")
flags.DEFINE_integer("seed", 0, "Seed of speakers, sentences and noise.")
flags.DEFINE_integer("cores", None, "Worker processes; default: all cores.")
flags.DEFINE_float("snr_db", None, "If set, add white or pink noise at this SNR (dB).")
flags.DEFINE_bool("overwrite", False, "Replace a corpus made with other flags.")
flags.DEFINE_enum("voices", "demo", ["demo", "varied", "random", "held_out",
                                     "held_out_variants", "held_out_rates"],
                  "Voice variants and speaking rates: demo (15 variants, 130-210 wpm), "
                  "varied (45 variants, 110-230 wpm, wider pitch), random (varied's rates "
                  "and pitch, every speaker a variant made from random formants, pitch, "
                  "voicing, breath, echo and spectral tilt: random_variant) or held_out (15 "
                  "variants and rates of 90-105 or 235-260 wpm that no training corpus "
                  "uses; for robustness test sets); held_out_variants (those variants at "
                  "varied's rates) and held_out_rates (varied's variants at those rates) "
                  "tell the two apart.")
flags.DEFINE_enum("texts", "lexicon", ["lexicon", "gettext_train", "gettext_test", "mixed"],
                  "Sentence source: the project's grammar (data_prep.lexicon), one half "
                  "of the system's Vietnamese gettext catalogues (data_prep.texts), drawn "
                  "round-robin over the keywords, or mixed: lexicon and gettext_train "
                  "sentences in turn.")

SAMPLE_RATE = 16000
SPEAKER_PREFIX = "VSYN"
SPLITS = ("train", "test")
RATE_WPM = (130, 210)  # inclusive range of speaking rates
PITCH = (30, 70)
# Per --voices: variants, inclusive rate ranges (wpm), pitch range.
VOICE_SETS = {
    "demo": (espeak.VARIANTS, (RATE_WPM,), PITCH),
    "varied": (espeak.VARIANTS + espeak.MORE_VARIANTS, ((110, 230),), (20, 80)),
    "random": ((), ((110, 230),), (20, 80)),
    "held_out": (espeak.HELD_OUT_VARIANTS, ((90, 105), (235, 260)), (20, 80)),
    "held_out_variants": (espeak.HELD_OUT_VARIANTS, ((110, 230),), (20, 80)),
    "held_out_rates": (espeak.VARIANTS + espeak.MORE_VARIANTS, ((90, 105), (235, 260)),
                       (20, 80)),
}
RANDOM_VARIANT_PREFIX = "kws_random_"
PITCH_RANGE = (25, 75)
VOLUME = (40, 60)
CLIP_VOLUME_FACTOR = 0.75  # volume scale after espeak saturated an utterance
PEAK_LIMIT = 0.99  # full scale after noise
DONE_DIR = ".done"
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5", "Annie", "aunty", "belinda", "shelby", "steph",
                   "steph3", "grandma", "linda", "steph2")
SETTINGS_FILE = "synthesis.json"


@dataclasses.dataclass(frozen=True)
class Speaker:
  """One synthetic speaker; ``voice`` is an ``espeak.Voice``, ``gender`` "m" or "f"."""
  speaker_id: str
  split: str
  gender: str
  voice: espeak.Voice
  seed: Sequence[int]  # entropy of the speaker's np.random.SeedSequence


def make_speakers(seed: int, speakers: int, test_speakers: int,
                  voices: str = "demo") -> List[Speaker]:
  """The speakers of a corpus: the last ``test_speakers`` of them are the test split.

  Voice/variant pairs of the ``voices`` set (``VOICE_SETS``) are drawn without
  replacement until all are used, so speakers differ in timbre as far as possible;
  with ``voices="random"`` every speaker has a variant of its own (``random_variant``).
  """
  variants, rates, pitch = VOICE_SETS[voices]
  if voices == "random":
    return _random_speakers(seed, speakers, test_speakers, rates, pitch)
  rng = np.random.default_rng([seed, 0])
  pairs = [(v, w) for v in espeak.VOICES for w in variants]
  order: List[int] = []
  while len(order) < speakers:
    order.extend(rng.permutation(len(pairs)).tolist())
  return [_speaker(rng, seed, index, speakers, test_speakers, pairs[order[index]][0],
                   pairs[order[index]][1], rates, pitch) for index in range(speakers)]


def _speaker(rng: np.random.Generator, seed: int, index: int, speakers: int,
             test_speakers: int, voice_name: str, variant, rates, pitch) -> Speaker:
  """Speaker ``index`` of ``speakers``: ``voice_name`` + ``variant`` (a shipped
  variant's name, or an ``espeak.Variant``), its rate (from one of ``rates``,
  drawn first when there are several), pitch, pitch range and volume drawn in
  that order from ``rng``."""
  made = variant if isinstance(variant, espeak.Variant) else None
  name = made.name if made else variant
  low, high = rates[int(rng.integers(len(rates)))] if len(rates) > 1 else rates[0]
  voice = espeak.Voice(
      name=f"{voice_name}+{name}",
      rate_wpm=int(rng.integers(low, high + 1)),
      pitch=int(rng.integers(pitch[0], pitch[1] + 1)),
      pitch_range=int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1)),
      volume=int(rng.integers(VOLUME[0], VOLUME[1] + 1)), variant=made)
  female = made.gender == "female" if made else variant in FEMALE_VARIANTS
  return Speaker(
      speaker_id=f"{SPEAKER_PREFIX}{index + 1:0{max(3, len(str(speakers)))}d}",
      split="test" if index >= speakers - test_speakers else "train",
      gender="f" if female else "m", voice=voice, seed=(seed, 1, index))


def random_variant(rng: np.random.Generator, name: str) -> espeak.Variant:
  """A voice variant of random settings, within the spans of the variants espeak-ng
  ships (``espeak.VARIANTS + MORE_VARIANTS``): male or female, a pitch range of
  that gender, formants 0-5 at a common scale (male 0.90-1.05, female 1.00-1.15)
  each moved by up to 5 % and of random height and width, voicing, consonant
  levels, roughness and flutter; sometimes breath (female), an echo and a
  spectral tilt (``tone``)."""
  female = bool(rng.random() < 0.5)
  base = int(rng.integers(140, 211)) if female else int(rng.integers(65, 121))
  top = base + int(rng.integers(40, 91) if female else rng.integers(30, 71))
  scale = rng.uniform(1.0, 1.15) if female else rng.uniform(0.90, 1.05)
  formants = tuple((int(round(100 * scale * rng.uniform(0.95, 1.05))),
                    int(rng.integers(70, 141)), int(rng.integers(70, 151)))
                   for _ in range(6))
  breath = ()
  if female and rng.random() < 0.5:
    level = int(rng.integers(1, 5))
    breath = (0, level - 1) + (level,) * 5 + (level - 1,)
  echo = (int(rng.integers(20, 141)), int(rng.integers(5, 21))) if rng.random() < 0.3 else ()
  tone = ()
  if rng.random() < 0.4:
    tone = tuple((hz, int(rng.integers(60, 201))) for hz in (600, 1200, 2000, 3000))
  return espeak.Variant(
      name=name, gender="female" if female else "male", pitch=(base, top), formants=formants,
      voicing=int(rng.integers(60, 121)),
      consonants=(int(rng.integers(60, 126)), int(rng.integers(60, 126))),
      roughness=int(rng.integers(0, 5)), flutter=int(rng.integers(0, 21)),
      breath=breath, echo=echo, tone=tone)


def _random_speakers(seed: int, speakers: int, test_speakers: int, rates,
                     pitch: Sequence[int]) -> List[Speaker]:
  """``make_speakers`` of ``voices="random"``: the regional voices in turn, each
  speaker with a ``random_variant`` of its own."""
  rng = np.random.default_rng([seed, 0, 1])
  width = max(3, len(str(speakers)))
  return [_speaker(rng, seed, index, speakers, test_speakers,
                   espeak.VOICES[index % len(espeak.VOICES)],
                   random_variant(rng, f"{RANDOM_VARIANT_PREFIX}{SPEAKER_PREFIX}"
                                       f"{index + 1:0{width}d}"), rates, pitch)
          for index in range(speakers)]


def utterance_id(speaker_id: str, index: int, count: int) -> str:
  """VIVOS-style id of the ``index``-th (0-based) of ``count`` utterances: "<SPK>_R001"."""
  return f"{speaker_id}_R{index + 1:0{max(3, len(str(count)))}d}"


def speaker_dir(out_dir: str, speaker: Speaker) -> str:
  """``<out_dir>/<split>/waves/<SPK>``."""
  return os.path.join(out_dir, speaker.split, "waves", speaker.speaker_id)


def wave_path(out_dir: str, speaker: Speaker, utt_id: str) -> str:
  return os.path.join(speaker_dir(out_dir, speaker), utt_id + ".wav")


def _done_path(out_dir: str, speaker_id: str) -> str:
  return os.path.join(out_dir, DONE_DIR, speaker_id + ".json")


def _write_atomically(path: str, text: str) -> None:
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.write(text)
  os.replace(tmp, path)


def add_noise(audio: np.ndarray, snr_db: float, span: slice,
              rng: np.random.Generator) -> np.ndarray:
  """Adds white or pink noise (chosen by ``rng``) at ``snr_db`` to float ``audio`` [n].

  The SNR is against the speech power inside ``span`` (the words, without the
  leading and trailing silence).
  """
  white = rng.standard_normal(len(audio))
  if rng.random() < 0.5:
    spectrum = np.fft.rfft(white)
    frequency = np.arange(len(spectrum), dtype=np.float64)
    spectrum[1:] /= np.sqrt(frequency[1:])
    spectrum[0] = 0
    noise = np.fft.irfft(spectrum, n=len(audio))
  else:
    noise = white
  speech_power = np.mean(audio[span] ** 2)
  noise *= np.sqrt(speech_power / (np.mean(noise ** 2) * 10 ** (snr_db / 10)))
  return audio + noise


def _to_pcm16(audio: np.ndarray) -> np.ndarray:
  """Float audio (full scale 1) -> int16; scaled down first if it would clip."""
  peak = np.max(np.abs(audio)) if audio.size else 0.0
  if peak > PEAK_LIMIT:
    audio = audio * (PEAK_LIMIT / peak)
  return np.clip(np.round(audio * 32768), -32768, 32767).astype(np.int16)


def _speak(text: str, voice: espeak.Voice) -> espeak.Synthesis:
  """Synthesises ``text``, lowering the volume until espeak does not saturate."""
  while True:
    synthesis = espeak.synthesize(text, voice)
    if not espeak.is_clipped(synthesis.samples):
      return synthesis
    voice = dataclasses.replace(voice, volume=int(voice.volume * CLIP_VOLUME_FACTOR))


def catalogue_sentences(rng: np.random.Generator, count: int, half: str) -> List[str]:
  """``count`` sentences of one half of the gettext catalogues (``data_prep.texts``):
  sentence i holds keyword ``i mod 9`` (round-robin from a random keyword),
  drawn uniformly among the sentences that hold it."""
  pool = texts.sentences(half=half)
  holding = [[s for s in pool if k in s.split()] for k in KEYWORDS]
  first = int(rng.integers(len(KEYWORDS)))
  chosen = []
  for i in range(count):
    candidates = holding[(first + i) % len(KEYWORDS)] or pool
    chosen.append(candidates[int(rng.integers(len(candidates)))])
  return chosen


def synthesize_speaker(out_dir: str, speaker: Speaker, utterances: int,
                       snr_db: Optional[float], progress=None,
                       text_source: str = "lexicon") -> dict:
  """Writes the waves of one speaker and its done marker; returns the marker's content.

  Must run in a fresh process for byte-identical output. ``progress``, if given,
  is called with 1 after each utterance. ``text_source`` is a ``--texts`` value.
  """
  text_seed, noise_seed = np.random.SeedSequence(list(speaker.seed)).spawn(2)
  text_rng = np.random.default_rng(text_seed)
  if text_source == "lexicon":
    sentences = lexicon.generate_sentences(text_rng, utterances)
  elif text_source == "mixed":
    grammar = lexicon.generate_sentences(text_rng, (utterances + 1) // 2)
    catalogue = catalogue_sentences(text_rng, utterances // 2, "train")
    sentences = [(grammar if i % 2 == 0 else catalogue)[i // 2] for i in range(utterances)]
  else:
    sentences = catalogue_sentences(text_rng, utterances, text_source.split("_")[1])
  noise_rng = np.random.default_rng(noise_seed)
  os.makedirs(speaker_dir(out_dir, speaker), exist_ok=True)
  records = []
  for index, sentence in enumerate(sentences):
    utt_id = utterance_id(speaker.speaker_id, index, utterances)
    synthesis = _speak(sentence, speaker.voice)
    audio = soxr.resample(synthesis.samples.astype(np.float32) / 32768,
                          espeak.SAMPLE_RATE, SAMPLE_RATE, quality="HQ").astype(np.float64)
    duration_ms = len(audio) * 1000 // SAMPLE_RATE
    words = []
    for span in synthesis.words:
      start_ms = min(round(span.start * 1000 / espeak.SAMPLE_RATE), duration_ms)
      end_ms = min(round(span.end * 1000 / espeak.SAMPLE_RATE), duration_ms)
      if end_ms <= start_ms:
        raise ValueError(f"{utt_id}: word {span.word!r} shorter than 1 ms")
      words.append((span.word, start_ms, end_ms))
    if snr_db is not None:
      speech = slice(words[0][1] * SAMPLE_RATE // 1000, words[-1][2] * SAMPLE_RATE // 1000)
      audio = add_noise(audio, snr_db, speech, noise_rng)
    path = wave_path(out_dir, speaker, utt_id)
    soundfile.write(path + ".tmp", _to_pcm16(audio), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(path + ".tmp", path)
    records.append({"id": utt_id, "text": sentence, "samples": len(audio), "words": words})
    if progress is not None:
      progress(1)
  marker = {
      "speaker": speaker.speaker_id, "split": speaker.split, "gender": speaker.gender,
      "voice": dataclasses.asdict(speaker.voice), "utterances": records,
  }
  _write_atomically(_done_path(out_dir, speaker.speaker_id),
                    json.dumps(marker, ensure_ascii=False, indent=1))
  return marker


def _load_finished(out_dir: str, speaker: Speaker, utterances: int) -> Optional[dict]:
  """The marker of a speaker whose waves all exist, else None."""
  try:
    with open(_done_path(out_dir, speaker.speaker_id), encoding="utf-8") as f:
      marker = json.load(f)
  except FileNotFoundError:
    return None
  ids = [utterance_id(speaker.speaker_id, i, utterances) for i in range(utterances)]
  if [r["id"] for r in marker["utterances"]] != ids:
    return None
  if not all(os.path.exists(wave_path(out_dir, speaker, i)) for i in ids):
    return None
  return marker


_PROGRESS_QUEUE = None


def _init_worker(progress_queue) -> None:
  global _PROGRESS_QUEUE
  _PROGRESS_QUEUE = progress_queue


def _worker(args) -> dict:
  out_dir, speaker, utterances, snr_db, text_source = args
  return synthesize_speaker(out_dir, speaker, utterances, snr_db, _PROGRESS_QUEUE.put,
                            text_source)


def transcript(text: str) -> str:
  """VIVOS transcript: upper case NFC."""
  return unicodedata.normalize("NFC", text.upper())


def write_index(out_dir: str, markers: List[dict]) -> None:
  """Writes prompts.txt, genders.txt and alignments.ctm of both splits from the markers."""
  for split in SPLITS:
    chosen = sorted((m for m in markers if m["split"] == split), key=lambda m: m["speaker"])
    utterances = sorted((r for m in chosen for r in m["utterances"]), key=lambda r: r["id"])
    prompts = "".join(f"{r['id']} {transcript(r['text'])}\n" for r in utterances)
    genders = "".join(f"{m['speaker']} {m['gender']}\n" for m in chosen)
    ctm = "".join(
        f"{r['id']} 1 {start / 1000:.3f} {(end - start) / 1000:.3f} {transcript(word)}\n"
        for r in utterances for word, start, end in r["words"])
    split_dir = os.path.join(out_dir, split)
    os.makedirs(split_dir, exist_ok=True)
    _write_atomically(os.path.join(split_dir, "prompts.txt"), prompts)
    _write_atomically(os.path.join(split_dir, "genders.txt"), genders)
    _write_atomically(os.path.join(split_dir, "alignments.ctm"), ctm)


def settings(speakers: int, test_speakers: int, utterances: int, seed: int,
             snr_db: Optional[float], voices: str = "demo", text_source: str = "lexicon") -> dict:
  """Everything the content depends on (not ``--cores``), as stored in synthesis.json.

  ``voices`` and ``texts`` appear only when not the defaults, so a default
  corpus keeps the settings it was made with.
  """
  grammar = json.dumps([lexicon.TEMPLATES, lexicon.RULES], ensure_ascii=False, sort_keys=True)
  chosen = {}
  if voices != "demo":
    chosen["voices"] = voices
  if text_source != "lexicon":
    chosen["texts"] = text_source
  return {**chosen,
      "speakers": speakers, "test_speakers": test_speakers,
      "utterances_per_speaker": utterances, "seed": seed, "snr_db": snr_db,
      "sample_rate": SAMPLE_RATE, "espeak_ng": espeak.library_version(),
      "lexicon_sha256": hashlib.sha256(grammar.encode("utf-8")).hexdigest(),
  }


def prepare_out_dir(out_dir: str, wanted: dict, overwrite: bool) -> None:
  """Refuses a non-empty ``out_dir`` made with other settings unless ``overwrite``.

  With ``overwrite`` only what this tool writes is removed.
  """
  settings_path = os.path.join(out_dir, SETTINGS_FILE)
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    existing = None
    if os.path.exists(settings_path):
      with open(settings_path, encoding="utf-8") as f:
        existing = json.load(f)
    if existing != wanted:
      if not overwrite:
        raise app.UsageError(
            f"{out_dir} is not empty and was not made with these flags "
            f"(found {existing}, want {wanted}); pass --overwrite to replace it")
      for name in SPLITS + (DONE_DIR,):
        shutil.rmtree(os.path.join(out_dir, name), ignore_errors=True)
  os.makedirs(os.path.join(out_dir, DONE_DIR), exist_ok=True)
  _write_atomically(settings_path, json.dumps(wanted, indent=1) + "\n")


def summary(markers: List[dict]) -> str:
  """Speakers, utterances, hours and keyword counts per split."""
  lines = []
  for split in SPLITS:
    chosen = [m for m in markers if m["split"] == split]
    records = [r for m in chosen for r in m["utterances"]]
    hours = sum(r["samples"] for r in records) / SAMPLE_RATE / 3600
    counts = collections.Counter(w for r in records for w in r["text"].split())
    words = sum(counts.values())
    keywords = " ".join(f"{k}={counts[k]}" for k in KEYWORDS)
    lines.append(f"{split}: {len(chosen)} speakers, {len(records)} utterances, "
                 f"{hours:.3f} h, {words} words; keywords: {keywords}")
  return "\n".join(lines)


def main(argv: List[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if not FLAGS.out_dir:
    raise app.UsageError("--out_dir is required")
  if not 1 <= FLAGS.test_speakers <= FLAGS.speakers:
    raise app.UsageError("need 1 <= --test_speakers <= --speakers")
  if FLAGS.utterances_per_speaker < 1:
    raise app.UsageError("need --utterances_per_speaker >= 1")
  if FLAGS.seed < 0:
    raise app.UsageError("need --seed >= 0")
  if FLAGS.cores is not None and FLAGS.cores < 1:
    raise app.UsageError("need --cores >= 1")
  cores = FLAGS.cores or os.cpu_count() or 1
  out_dir = FLAGS.out_dir
  utterances = FLAGS.utterances_per_speaker
  prepare_out_dir(out_dir, settings(FLAGS.speakers, FLAGS.test_speakers, utterances,
                                    FLAGS.seed, FLAGS.snr_db, FLAGS.voices, FLAGS.texts),
                  FLAGS.overwrite)
  if FLAGS.texts != "lexicon":
    texts.sentences(half="test" if FLAGS.texts == "gettext_test" else "train")  # fail early
  speakers = make_speakers(FLAGS.seed, FLAGS.speakers, FLAGS.test_speakers, FLAGS.voices)
  markers: Dict[str, dict] = {}
  for speaker in speakers:
    marker = _load_finished(out_dir, speaker, utterances)
    if marker is not None:
      markers[speaker.speaker_id] = marker
  todo = [s for s in speakers if s.speaker_id not in markers]
  total = len(speakers) * utterances
  with tqdm.tqdm(total=total, initial=total - len(todo) * utterances, unit="utt") as bar:
    if todo:
      context = multiprocessing.get_context("spawn")
      progress = context.Queue()
      with context.Pool(min(cores, len(todo)), initializer=_init_worker, initargs=(progress,),
                        maxtasksperchild=1) as pool:
        result = pool.map_async(
            _worker, [(out_dir, s, utterances, FLAGS.snr_db, FLAGS.texts) for s in todo],
            chunksize=1)
        reported = 0
        while reported < len(todo) * utterances:
          if result.ready() and not result.successful():
            result.get()  # raises the worker's error
          try:
            count = progress.get(timeout=0.2)
          except queue.Empty:
            continue
          reported += count
          bar.update(count)
        for marker in result.get():
          markers[marker["speaker"]] = marker
  ordered = [markers[s.speaker_id] for s in speakers]
  write_index(out_dir, ordered)
  print(f"synthetic corpus (espeak-ng) in {out_dir}")
  print(summary(ordered))


def run() -> None:
  """Console script ``kws-synthesize-corpus``."""
  cli.run_app(main, __name__)


if __name__ == "__main__":
  run()
