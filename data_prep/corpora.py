"""Corpus readers: VIVOS, LibriSpeech and NeMo-style JSONL manifests; CTM alignments.

Every reader returns :class:`Utterance` records sorted by (split, id). A
reader raises only for structural problems (a missing folder, a split that
does not exist, a malformed manifest line). A problem of one utterance (its
audio file is missing, it has no transcript, the transcript is empty or not
UTF-8) is reported in ``Utterance.problem``, one of :data:`PROBLEMS`, for the
converter to count as a skip reason.

Split selection (the same for all three layouts): a requested split selects
the folder (or manifest) of exactly that name when there is one, otherwise
every folder whose name starts with the split followed by "-" or "_". So
"train" selects train-clean-100, train-clean-360 and train-other-500, and
"dev" selects dev-clean and dev-other; "dev-clean" selects only dev-clean.

The VIVOS and LibriSpeech readers take an utterance's audio as ``<ID>.wav`` or
``<ID>.flac`` (:data:`AUDIO_EXTENSIONS`; both at once is an error).
"""
import codecs
import collections
import dataclasses
import glob
import json
import math
import os
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from kws_tf import text as text_lib

CORPORA = ("vivos", "librispeech", "manifest")
AUDIO_EXTENSIONS = (".wav", ".flac")

MISSING_AUDIO = "missing audio"
MISSING_TRANSCRIPT = "missing transcript"
EMPTY_TRANSCRIPT = "empty transcript"
NON_UTF8_TRANSCRIPT = "non-utf8 transcript"
PROBLEMS = (MISSING_AUDIO, MISSING_TRANSCRIPT, EMPTY_TRANSCRIPT, NON_UTF8_TRANSCRIPT)


@dataclasses.dataclass(frozen=True)
class Utterance:
  """One utterance of a corpus.

  ``text`` is the transcript as written in the corpus (not normalised), None
  when there is none or it is not valid UTF-8. ``problem`` is None for a
  usable utterance, else one of :data:`PROBLEMS` ("missing audio" wins over
  the transcript problems). "empty transcript" means nothing is left after
  ``kws_tf.text.normalize``. A manifest entry may name a segment of its audio
  file: the utterance is the audio from ``offset`` for ``duration`` seconds.
  """
  id: str                           # unique within the corpus: VIVOSSPK01_R001, 1272-128104-0000
  audio_path: str                   # absolute path (where the file should be, if missing)
  text: Optional[str]
  speaker: str                      # "" when the corpus does not say
  split: str                        # the folder or manifest stem it came from: "train", "dev-clean"
  duration: Optional[float] = None  # seconds, when the corpus states it (None: to the file's end)
  problem: Optional[str] = None
  offset: Optional[float] = None    # seconds into the file where it starts (None: the start)


@dataclasses.dataclass(frozen=True)
class Word:
  """One aligned word; times in seconds from the start of the utterance."""
  start: float
  end: float
  word: str


def parse_splits(splits: str) -> List[str]:
  """"train, test" -> ["train", "test"]: comma-separated, blanks and repeats dropped."""
  names = []
  for name in splits.split(","):
    name = name.strip()
    if name and name not in names:
      names.append(name)
  if not names:
    raise ValueError(f"no split named in {splits!r}")
  return names


def read_corpus(corpus: str, data_dir: str, splits: Sequence[str]) -> List[Utterance]:
  """Reads ``splits`` of a corpus of kind ``corpus`` (one of :data:`CORPORA`).

  ``splits`` may also be one comma-separated string. Returns utterances sorted
  by (split, id). Raises ValueError when an id occurs twice.
  """
  readers = {"vivos": read_vivos, "librispeech": read_librispeech,
             "manifest": read_manifest}
  if corpus not in readers:
    raise ValueError(f"unknown corpus {corpus!r}; known: {', '.join(CORPORA)}")
  if isinstance(splits, str):
    splits = parse_splits(splits)
  utterances = readers[corpus](data_dir, splits)
  splits_of = collections.defaultdict(list)
  for utterance in utterances:
    splits_of[utterance.id].append(utterance.split)
  repeated = {i: s for i, s in splits_of.items() if len(s) > 1}
  if repeated:
    examples = ", ".join(f"{i} in {s}" for i, s in sorted(repeated.items())[:5])
    raise ValueError(f"{data_dir}: {len(repeated)} ids occur more than once: {examples}")
  return utterances


def read_vivos(data_dir: str, splits: Sequence[str]) -> List[Utterance]:
  """VIVOS: ``<split>/prompts.txt`` ("ID TRANSCRIPT" lines) and
  ``<split>/waves/<SPEAKER>/<ID>.wav`` (or ``.flac``). genders.txt is not read."""
  root = _existing_dir(data_dir)
  available = [name for name in _subdirs(root)
               if os.path.isfile(os.path.join(root, name, "prompts.txt"))
               or os.path.isdir(os.path.join(root, name, "waves"))]
  utterances = []
  for split in _select_splits(splits, available, root):
    folder = os.path.join(root, split)
    prompts = os.path.join(folder, "prompts.txt")
    transcripts = _read_transcripts([prompts] if os.path.isfile(prompts) else [])
    waves = os.path.join(folder, "waves")
    audio = {}
    for speaker in _subdirs(waves) if os.path.isdir(waves) else []:
      audio.update(_audio_files(os.path.join(waves, speaker), audio))
    for utt_id in sorted(set(audio) | set(transcripts)):
      speaker = utt_id.rsplit("_", 1)[0]
      path = audio.get(utt_id, os.path.join(waves, speaker, utt_id + ".wav"))
      text, text_problem = transcripts.get(utt_id, (None, None))
      utterances.append(_utterance(utt_id, path, text, text_problem,
                                   os.path.basename(os.path.dirname(path)), split))
  return sorted(utterances, key=lambda u: (u.split, u.id))


def read_librispeech(data_dir: str, splits: Sequence[str]) -> List[Utterance]:
  """LibriSpeech: ``<split>/<speaker>/<chapter>/<ID>.flac`` (or ``.wav``) and
  ``<split>/<speaker>/<chapter>/*.trans.txt`` ("ID TRANSCRIPT" lines)."""
  root = _existing_dir(data_dir)
  utterances = []
  for split in _select_splits(splits, _subdirs(root), root):
    for speaker in _subdirs(os.path.join(root, split)):
      for chapter in _subdirs(os.path.join(root, split, speaker)):
        folder = os.path.join(root, split, speaker, chapter)
        transcripts = _read_transcripts(sorted(glob.glob(os.path.join(folder, "*.trans.txt"))))
        audio = _audio_files(folder, {})
        for utt_id in sorted(set(audio) | set(transcripts)):
          path = audio.get(utt_id, os.path.join(folder, utt_id + ".flac"))
          text, text_problem = transcripts.get(utt_id, (None, None))
          utterances.append(_utterance(utt_id, path, text, text_problem, speaker, split))
  return sorted(utterances, key=lambda u: (u.split, u.id))


def read_manifest(path_or_dir: str, splits: Sequence[str]) -> List[Utterance]:
  """NeMo JSONL manifests: one JSON object per line with "audio_filepath",
  "text" (optional), "offset" and "duration" (seconds, optional), "speaker"
  (optional).

  As in NeMo, an entry is the audio from "offset" (default 0) for "duration"
  seconds (default: to the end of the file), so several entries may name
  segments of one long file.

  ``path_or_dir`` is one manifest or a folder of ``<split>.jsonl`` (or
  ``.json``) files; a manifest's split is its file stem, selected by the rule
  in the module docstring. Relative audio paths are resolved against the
  manifest's folder. The id is the audio file's stem; stems of more than one
  file among the selected splits get the audio path relative to the manifest
  folder instead (without extension, "/" replaced by "_"), e.g.
  "train_spk1_a", so an id can depend on which splits are read together.
  Entries that share one audio file add their offset in milliseconds, seven
  digits: "talk-0012500".

  Raises ValueError naming file and line for a line that is not a JSON
  object with a string "audio_filepath", a string or null "text", a
  number >= 0 as "offset" and a number > 0 as "duration".
  """
  manifests = _manifest_files(path_or_dir)
  entries = []
  for split in _select_splits(splits, list(manifests), path_or_dir):
    entries.extend(_read_manifest_file(manifests[split], split))
  stem_counts = collections.Counter(
      stem for stem, _ in {(e["stem"], e["audio_path"]) for e in entries})
  path_counts = collections.Counter(entry["audio_path"] for entry in entries)
  utterances = []
  for entry in entries:
    utt_id = entry.pop("stem")
    long_id = entry.pop("long_id")
    if stem_counts[utt_id] > 1:
      utt_id = long_id
    if path_counts[entry["audio_path"]] > 1:
      utt_id += f"-{round((entry['offset'] or 0.0) * 1000):07d}"
    utterances.append(_utterance(utt_id, **entry))
  return sorted(utterances, key=lambda u: (u.split, u.id))


def read_ctm(paths: Sequence[str]) -> Dict[str, List[Word]]:
  """Word alignments from CTM files: utterance id -> words sorted by start.

  Lines are ``<utt> <channel> <start> <duration> <word> [<confidence>]``,
  times in seconds; blank lines and ";;" comments are skipped. ``paths`` may
  hold glob patterns. Raises FileNotFoundError for a pattern that matches
  nothing, ValueError naming file and line for a malformed line.
  """
  files = []
  for pattern in paths:
    matches = sorted(glob.glob(pattern))
    if not matches:
      raise FileNotFoundError(f"no CTM file matches {pattern!r}")
    files.extend(m for m in matches if m not in files)
  alignments = collections.defaultdict(list)
  for path in files:
    for number, line, valid_utf8 in _lines(path):
      if not valid_utf8:
        raise ValueError(f"{path}:{number}: not UTF-8")
      fields = line.split()
      if not fields or fields[0].startswith(";;"):
        continue
      if len(fields) not in (5, 6):
        raise ValueError(f"{path}:{number}: expected 5 or 6 fields, got {len(fields)}: {line!r}")
      try:
        start, duration = float(fields[2]), float(fields[3])
      except ValueError:
        raise ValueError(f"{path}:{number}: start and duration must be numbers: {line!r}") from None
      if not (math.isfinite(start) and math.isfinite(duration)) or start < 0 or duration < 0:
        raise ValueError(f"{path}:{number}: negative or non-finite time: {line!r}")
      alignments[fields[0]].append(Word(start, start + duration, fields[4]))
  return {utt: sorted(words, key=lambda w: w.start) for utt, words in alignments.items()}


def _utterance(utt_id: str, audio_path: str, text: Optional[str],
               text_problem: Optional[str], speaker: str, split: str,
               duration: Optional[float] = None, offset: Optional[float] = None) -> Utterance:
  """An Utterance whose ``problem`` is derived from the audio file and text."""
  if not os.path.isfile(audio_path):
    problem = MISSING_AUDIO
  elif text_problem is not None:
    problem = text_problem
  elif text is None:
    problem = MISSING_TRANSCRIPT
  elif not text_lib.normalize(text):
    problem = EMPTY_TRANSCRIPT
  else:
    problem = None
  return Utterance(utt_id, audio_path, text, speaker, split, duration, problem, offset)


def _existing_dir(path: str) -> str:
  if not os.path.isdir(path):
    raise FileNotFoundError(f"corpus folder {path!r} does not exist")
  return os.path.abspath(path)


def _subdirs(folder: str) -> List[str]:
  """Sorted names of the sub-folders of ``folder``."""
  return sorted(e.name for e in os.scandir(folder) if e.is_dir())


def _select_splits(requested: Sequence[str], available: Sequence[str],
                   where: str) -> List[str]:
  """Names in ``available`` selected by ``requested`` (see the module docstring),
  in request order without repeats. Raises ValueError listing ``available``."""
  if not requested:
    raise ValueError("no split requested")
  selected = []
  for split in requested:
    if split in available:
      matches = [split]
    else:
      matches = sorted(name for name in available
                       if name.startswith(split + "-") or name.startswith(split + "_"))
    if not matches:
      raise ValueError(f"split {split!r} not found in {where}; "
                       f"available: {', '.join(sorted(available)) or 'none'}")
    selected.extend(m for m in matches if m not in selected)
  return selected


def _audio_files(folder: str, known: Dict[str, str]) -> Dict[str, str]:
  """Stem -> absolute path of the files in ``folder`` ending in one of
  :data:`AUDIO_EXTENSIONS` (any case). Raises ValueError for a stem already in
  ``known`` or in another extension or case."""
  found = {}
  for name in sorted(os.listdir(folder)):
    stem, ext = os.path.splitext(name)
    if ext.lower() not in AUDIO_EXTENSIONS:
      continue
    path = os.path.join(folder, name)
    if stem in known or stem in found:
      raise ValueError(f"audio id {stem!r} occurs twice: "
                       f"{known.get(stem) or found.get(stem)} and {path}")
    found[stem] = path
  return found


def _read_transcripts(paths: Sequence[str]) -> Dict[str, Tuple[Optional[str], Optional[str]]]:
  """"ID TRANSCRIPT" lines -> {id: (text, problem)}. A line that is not UTF-8
  gives (None, "non-utf8 transcript"); its id is read with the invalid bytes
  replaced. Raises ValueError for an id listed twice."""
  transcripts = {}
  where = {}
  for path in paths:
    for number, line, valid_utf8 in _lines(path):
      parts = line.split(None, 1)
      if not parts:
        continue
      utt_id = parts[0]
      if utt_id in where:
        raise ValueError(f"{path}:{number}: id {utt_id!r} already listed at {where[utt_id]}")
      where[utt_id] = f"{path}:{number}"
      if valid_utf8:
        transcripts[utt_id] = (parts[1].strip() if len(parts) > 1 else "", None)
      else:
        transcripts[utt_id] = (None, NON_UTF8_TRANSCRIPT)
  return transcripts


def _manifest_files(path_or_dir: str) -> Dict[str, str]:
  """Split name (file stem) -> absolute manifest path."""
  if os.path.isfile(path_or_dir):
    paths = [os.path.abspath(path_or_dir)]
  elif os.path.isdir(path_or_dir):
    paths = [os.path.join(os.path.abspath(path_or_dir), name)
             for name in sorted(os.listdir(path_or_dir))
             if name.endswith((".jsonl", ".json"))]
  else:
    raise FileNotFoundError(f"manifest {path_or_dir!r} does not exist")
  manifests = {}
  for path in paths:
    stem = os.path.splitext(os.path.basename(path))[0]
    if stem in manifests:
      raise ValueError(f"two manifests for split {stem!r}: {manifests[stem]} and {path}")
    manifests[stem] = path
  return manifests


def _read_manifest_file(path: str, split: str) -> List[dict]:
  """Keyword arguments of :func:`_utterance` per line, plus "stem" and
  "long_id" for :func:`read_manifest` to choose the id."""
  folder = os.path.dirname(path)
  entries = []
  for number, line, valid_utf8 in _lines(path):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError as error:
      raise ValueError(f"{path}:{number}: malformed JSON: {error}") from None
    if not isinstance(record, dict) or not isinstance(record.get("audio_filepath"), str):
      raise ValueError(f"{path}:{number}: not a JSON object with a string audio_filepath")
    text = record.get("text")
    if text is not None and not isinstance(text, str):
      raise ValueError(f"{path}:{number}: text must be a string, got {text!r}")
    offset, duration = record.get("offset"), record.get("duration")
    if offset is not None and not (_is_number(offset) and offset >= 0):
      raise ValueError(f"{path}:{number}: offset must be a number >= 0 (seconds), "
                       f"got {offset!r}")
    if duration is not None and not (_is_number(duration) and duration > 0):
      raise ValueError(f"{path}:{number}: duration must be a number > 0 (seconds), "
                       f"got {duration!r}")
    audio_path = os.path.normpath(os.path.join(folder, record["audio_filepath"]))
    relative = os.path.relpath(audio_path, folder)
    if relative.split(os.sep)[0] == os.pardir:
      relative = audio_path.lstrip(os.sep)
    entries.append({
        "stem": os.path.splitext(os.path.basename(audio_path))[0],
        "long_id": os.path.splitext(relative)[0].replace(os.sep, "_"),
        "audio_path": audio_path,
        "text": text if valid_utf8 else None,
        "text_problem": None if valid_utf8 else NON_UTF8_TRANSCRIPT,
        "speaker": str(record.get("speaker", "")),
        "split": split,
        "duration": None if duration is None else float(duration),
        "offset": None if offset is None else float(offset),
    })
  return entries


def _is_number(value) -> bool:
  """A finite JSON number (not a boolean)."""
  return (isinstance(value, (int, float)) and not isinstance(value, bool)
          and math.isfinite(value))


def _lines(path: str) -> Iterator[Tuple[int, str, bool]]:
  """(1-based line number, line without its end, whether it is valid UTF-8).

  Each line is decoded on its own; invalid bytes become U+FFFD. A UTF-8 byte
  order mark at the start of the file is dropped.
  """
  with open(path, "rb") as f:
    for number, raw in enumerate(f, start=1):
      if number == 1 and raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
      raw = raw.rstrip(b"\r\n")
      try:
        line, valid = raw.decode("utf-8"), True
      except UnicodeDecodeError:
        line, valid = raw.decode("utf-8", errors="replace"), False
      yield number, line, valid
