"""Vietnamese speech with word timings from libespeak-ng, through ctypes.

libespeak-ng is initialised in synchronous mode: ``espeak_Synth`` returns once
the whole text is synthesised, having called our callback with blocks of int16
samples at ``SAMPLE_RATE`` Hz and arrays of ``espeak_EVENT``. A WORD event gives
the sample at which a word starts, the END event the end of the speech.

Quirks of espeak-ng 1.51 handled here:
- it sometimes sends an extra WORD event of length 0 near the end: dropped;
- character positions drift after a full stop, so events are matched to the
  words of the text by order, not by position;
- the library is a process-wide singleton, and the audio of a text can depend on
  earlier calls in the same process: callers that need byte-identical output
  must synthesise the same sequence of texts in a fresh process.

Besides the variants espeak-ng ships, a voice can carry a ``Variant`` made by
the caller (formants, pitch, voicing, breath...). The first such voice moves the
library onto a private copy of its data directory (symbolic links to the
installed files, removed at exit) whose ``voices/!v`` also holds the made
variants' files. The installed files give the same audio through the copy.
"""
import atexit
import ctypes
import dataclasses
import os
import shutil
import tempfile
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

LIBRARY = "libespeak-ng.so.1"
SAMPLE_RATE = 22050
VOICES = ("vi", "vi-vn-x-central", "vi-vn-x-south")
# Variants that follow the rate and stay below full scale at volume <= 60.
# Excluded: named variants that override timing (Andrea, anika, antonio,
# Marco, Alicia, ...) and klatt, klatt2, klatt4, which clip even at volume 50.
VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5", "klatt3", "klatt5",
)
# Named variants that also follow the rate and peak below 32000 at volume 50
# (espeak-ng 1.51, a 16-word sentence at 110 and 240 wpm). HELD_OUT_VARIANTS
# are kept for robustness test sets: no training corpus uses them.
MORE_VARIANTS = (
    "Andy", "Annie", "Denis", "Henrique", "Hugo", "Mario", "Michael", "Nguyen",
    "adam", "aunty", "belinda", "boris", "caleb", "edward", "edward2", "grandpa",
    "iven3", "kaukovalta", "klatt6", "marcelo", "max", "miguel", "pablo", "quincy",
    "robert", "shelby", "steph", "steph3", "travis", "victor",
)
HELD_OUT_VARIANTS = (
    "Alex", "AnxiousAndy", "Diogo", "Lee", "Mike", "announcer", "benjamin", "david",
    "grandma", "iven4", "linda", "michel", "norbert", "rob", "steph2",
)
RATE_MIN_WPM = 80
RATE_MAX_WPM = 450
INT16_LIMIT = 32767

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_OPTIONS = 0  # no PHONEME events: only WORD and END are used
_CHARS_UTF8 = 1
_POS_CHARACTER = 1
_EVENT_LIST_TERMINATED = 0
_EVENT_WORD = 1
_EVENT_END = 5
_RATE = 1
_VOLUME = 2
_PITCH = 3
_RANGE = 4

# Energy trimming of the silence before the first and after the last word.
_TRIM_FRAME = 110  # samples, 5 ms
_TRIM_BELOW_PEAK_DB = 40.0


class EspeakError(RuntimeError):
  """libespeak-ng is missing, refused a call, or its events do not fit the text."""


class _EventId(ctypes.Union):
  _fields_ = [
      ("number", ctypes.c_int),
      ("name", ctypes.c_char_p),
      ("string", ctypes.c_char * 8),
  ]


class _Event(ctypes.Structure):
  """``espeak_EVENT`` of speak_lib.h."""
  _fields_ = [
      ("type", ctypes.c_int),
      ("unique_identifier", ctypes.c_uint),
      ("text_position", ctypes.c_int),
      ("length", ctypes.c_int),
      ("audio_position", ctypes.c_int),  # ms
      ("sample", ctypes.c_int),  # samples since the start of the text
      ("user_data", ctypes.c_void_p),
      ("id", _EventId),
  ]


_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclasses.dataclass(frozen=True)
class WordSpan:
  """One word of a synthesis; samples at ``SAMPLE_RATE``, ``start`` < ``end``."""
  word: str
  start: int
  end: int


@dataclasses.dataclass(frozen=True)
class Synthesis:
  """``samples``: int16 [num_samples] at ``SAMPLE_RATE``; ``words`` in text order."""
  samples: np.ndarray
  words: List[WordSpan]


@dataclasses.dataclass(frozen=True)
class Variant:
  """A voice variant file of espeak-ng's ``voices/!v`` syntax, made by the caller.

  name: the file's name (letters, digits and "_"); the voice "vi+<name>" uses it.
  gender: "male" or "female".
  pitch: base and top of the pitch range, Hz.
  formants: (frequency, height, width) in percent of the voice's, for formants
    0, 1, 2, ... (espeak-ng has 0..8).
  voicing: percent of the voiced sounds' amplitude (100: unchanged).
  consonants: percent amplitudes of the unvoiced and voiced consonants.
  roughness, flutter: 0..7 and 0..: creak and pitch jitter.
  breath: 8 breathiness amplitudes (formants 1..8), or () for none.
  echo: delay (ms) and percent amplitude, or () for none.
  tone: (frequency Hz, percent amplitude) points of a spectral envelope, or ().
  """
  name: str
  gender: str
  pitch: Tuple[int, int]
  formants: Tuple[Tuple[int, int, int], ...]
  voicing: int = 100
  consonants: Tuple[int, int] = (100, 100)
  roughness: int = 0
  flutter: int = 0
  breath: Tuple[int, ...] = ()
  echo: Tuple[int, int] = ()
  tone: Tuple[Tuple[int, int], ...] = ()

  def text(self) -> str:
    """The variant file."""
    lines = ["language variant", f"name {self.name}", f"gender {self.gender}",
             "pitch {} {}".format(*self.pitch)]
    lines += [f"formant {i} {f} {h} {w}" for i, (f, h, w) in enumerate(self.formants)]
    lines += [f"voicing {self.voicing}", "consonants {} {}".format(*self.consonants),
              f"roughness {self.roughness}", f"flutter {self.flutter}"]
    if self.breath:
      lines.append("breath " + " ".join(str(b) for b in self.breath))
    if self.echo:
      lines.append("echo {} {}".format(*self.echo))
    if self.tone:
      lines.append("tone " + " ".join(f"{f} {a}" for f, a in self.tone))
    return "\n".join(lines) + "\n"


@dataclasses.dataclass(frozen=True)
class Voice:
  """A voice and its parameters.

  name: one of ``VOICES``, optionally with "+variant" (``VARIANTS``), e.g. "vi+f2",
    or "+<variant.name>" of the made ``variant``.
  rate_wpm: words per minute, ``RATE_MIN_WPM``..``RATE_MAX_WPM`` (espeak's default 175).
  pitch, pitch_range: 0..100, 50 is espeak's default.
  volume: 0..200, 100 is espeak's full volume (it may clip at 100).
  variant: a made variant (``Variant``), or None.
  """
  name: str
  rate_wpm: int = 175
  pitch: int = 50
  pitch_range: int = 50
  volume: int = 50
  variant: Optional[Variant] = None


def _load(library: str) -> ctypes.CDLL:
  try:
    return ctypes.CDLL(library)
  except OSError as error:
    raise EspeakError(
        f"cannot load {library} ({error}); install it with `apt-get install espeak-ng`"
    ) from error


class _Engine:
  """The process-wide libespeak-ng: initialised once, one voice at a time."""

  def __init__(self, library: str):
    self._lib = _load(library)
    self._lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p,
                                            ctypes.c_int]
    self._lib.espeak_Info.restype = ctypes.c_char_p
    self._lib.espeak_Info.argtypes = [ctypes.POINTER(ctypes.c_char_p)]
    self._private_data: Optional[str] = None  # the private data directory's parent
    self._variants: Dict[str, Variant] = {}
    self._initialize(None)
    self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    self._lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
        ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    self._blocks: List[np.ndarray] = []
    self._word_samples: List[int] = []
    self._end_samples: List[int] = []
    self._callback = _CALLBACK(self._on_synth)  # kept referenced while the library uses it
    self._lib.espeak_SetSynthCallback(self._callback)
    self._voice: Optional[Voice] = None

  def _initialize(self, path: Optional[str]) -> None:
    """Initialises the library on the data directory under ``path`` (None: the installed one)."""
    rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0,
                                       None if path is None else path.encode("utf-8"),
                                       _INITIALIZE_OPTIONS)
    if rate != SAMPLE_RATE:
      raise EspeakError(f"espeak_Initialize returned {rate}, expected {SAMPLE_RATE} Hz")

  def _add_variant(self, variant: Variant) -> None:
    """Writes ``variant``'s file into the private data directory, moving the
    library there first (module docstring)."""
    if self._variants.get(variant.name) == variant:
      return
    if not variant.name.replace("_", "").isalnum() or variant.name in _known_variants():
      raise EspeakError(f"a made variant needs a new name of letters, digits and '_', "
                        f"not {variant.name!r}")
    if self._private_data is None:
      installed = ctypes.c_char_p()
      self._lib.espeak_Info(ctypes.byref(installed))
      self._private_data = _link_data_dir(installed.value.decode("utf-8"))
      self._lib.espeak_Terminate()
      self._initialize(self._private_data)
      self._lib.espeak_SetSynthCallback(self._callback)
    path = os.path.join(self._private_data, "espeak-ng-data", "voices", "!v", variant.name)
    with open(path, "w", encoding="utf-8") as f:
      f.write(variant.text())
    self._variants[variant.name] = variant
    self._voice = None

  def _on_synth(self, wav, num_samples, events) -> int:
    if wav and num_samples > 0:
      self._blocks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
    i = 0
    while events[i].type != _EVENT_LIST_TERMINATED:
      event = events[i]
      if event.type == _EVENT_WORD and event.length > 0:
        self._word_samples.append(event.sample)
      elif event.type == _EVENT_END:
        self._end_samples.append(event.sample)
      i += 1
    return 0

  def _set_voice(self, voice: Voice) -> None:
    if voice == self._voice:
      return
    base, _, variant = voice.name.partition("+")
    known = _known_variants()
    if voice.variant is not None:
      if base not in VOICES or variant != voice.variant.name:
        raise EspeakError(f"voice {voice.name!r} with a made variant must be one of {VOICES} "
                          f"+ {voice.variant.name!r}")
      self._add_variant(voice.variant)
    elif base not in VOICES or (variant and variant not in known):
      raise EspeakError(f"voice {voice.name!r} is not one of {VOICES}, optionally "
                        f"+ one of {known} (espeak-ng ignores unknown variants)")
    if not RATE_MIN_WPM <= voice.rate_wpm <= RATE_MAX_WPM:
      raise EspeakError(f"rate {voice.rate_wpm} wpm outside {RATE_MIN_WPM}..{RATE_MAX_WPM}")
    if self._lib.espeak_SetVoiceByName(voice.name.encode("utf-8")) != 0:
      raise EspeakError(f"espeak-ng has no voice {voice.name!r}")
    for parameter, value in ((_RATE, voice.rate_wpm), (_PITCH, voice.pitch),
                             (_RANGE, voice.pitch_range), (_VOLUME, voice.volume)):
      if self._lib.espeak_SetParameter(parameter, value, 0) != 0:
        raise EspeakError(f"espeak_SetParameter({parameter}, {value}) failed")
    self._voice = voice

  def synthesize(self, text: str, voice: Voice) -> Synthesis:
    words = text.split()
    if not words:
      raise EspeakError("nothing to synthesise")
    self._set_voice(voice)
    self._blocks, self._word_samples, self._end_samples = [], [], []
    data = " ".join(words).encode("utf-8") + b"\0"
    status = self._lib.espeak_Synth(data, len(data), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
    if status != 0:
      raise EspeakError(f"espeak_Synth failed ({status}) on {text!r}")
    samples = np.concatenate(self._blocks) if self._blocks else np.zeros(0, np.int16)
    if len(self._word_samples) != len(words):
      raise EspeakError(
          f"espeak-ng reported {len(self._word_samples)} words for the {len(words)} "
          f"words of {text!r}")
    end = self._end_samples[-1] if self._end_samples else len(samples)
    return Synthesis(samples, _word_spans(words, self._word_samples, min(end, len(samples)),
                                          samples))


def _word_spans(words: List[str], starts: List[int], end: int,
                samples: np.ndarray) -> List[WordSpan]:
  """Spans from word start samples; silence trimmed before the first and after the last word."""
  voiced = _voiced_frames(samples[:end])
  if voiced.size == 0:
    raise EspeakError(f"espeak-ng produced silence for {' '.join(words)!r}")
  starts = [int(s) for s in starts]
  first_voiced = int(voiced[0]) * _TRIM_FRAME
  if first_voiced < (starts[1] if len(starts) > 1 else end):
    starts[0] = max(starts[0], first_voiced)
  end = min(end, (int(voiced[-1]) + 1) * _TRIM_FRAME)
  ends = starts[1:] + [end]
  spans = [WordSpan(w, s, e) for w, s, e in zip(words, starts, ends)]
  for span in spans:
    if not 0 <= span.start < span.end <= len(samples):
      raise EspeakError(f"bad span for {span.word!r}: {span.start}..{span.end} "
                        f"of {len(samples)} samples in {' '.join(words)!r}")
  return spans


def _voiced_frames(samples: np.ndarray) -> np.ndarray:
  """Indices of the ``_TRIM_FRAME``-sample frames within ``_TRIM_BELOW_PEAK_DB`` of the loudest."""
  count = -(-len(samples) // _TRIM_FRAME)
  if count == 0:
    return np.zeros(0, np.int64)
  padded = np.zeros(count * _TRIM_FRAME, np.float64)
  padded[:len(samples)] = samples
  energy = np.mean(padded.reshape(count, _TRIM_FRAME) ** 2, axis=1)
  if energy.max() == 0:
    return np.zeros(0, np.int64)
  return np.flatnonzero(energy > energy.max() * 10 ** (-_TRIM_BELOW_PEAK_DB / 10))


def _known_variants() -> Sequence[str]:
  return VARIANTS + MORE_VARIANTS + HELD_OUT_VARIANTS


def _link_data_dir(installed: str) -> str:
  """A temporary directory holding ``espeak-ng-data``: links to every file of the
  installed data directory ``installed``, except that ``voices/!v`` is a
  directory of links (so variant files can be added). Removed at exit."""
  if not os.path.isdir(os.path.join(installed, "voices", "!v")):
    raise EspeakError(f"espeak-ng's data directory {installed!r} has no voices/!v")
  root = tempfile.mkdtemp(prefix="kws_espeak_")
  atexit.register(shutil.rmtree, root, True)
  data = os.path.join(root, "espeak-ng-data")
  for sub in ("", "voices", os.path.join("voices", "!v")):
    os.mkdir(os.path.join(data, sub))
    keep = {"": "voices", "voices": "!v", os.path.join("voices", "!v"): None}[sub]
    for entry in os.listdir(os.path.join(installed, sub)):
      if entry != keep:
        os.symlink(os.path.join(installed, sub, entry), os.path.join(data, sub, entry))
  return root


_ENGINE: Optional[_Engine] = None


def synthesize(text: str, voice: Voice, library: str = LIBRARY) -> Synthesis:
  """Speaks ``text`` (words separated by white space) with ``voice``.

  Returns int16 samples at ``SAMPLE_RATE`` Hz and one ``WordSpan`` per word of
  the text, in order: a word starts at espeak's WORD event and ends where the
  next word starts; the first word starts at the first sound, the last word
  ends with the last sound. Raises ``EspeakError`` if libespeak-ng cannot be
  loaded or its WORD events do not match the words one to one. ``library`` is
  loaded by the first call in a process and kept.
  """
  global _ENGINE
  if _ENGINE is None:
    _ENGINE = _Engine(library)
  return _ENGINE.synthesize(text, voice)


def library_version(library: str = LIBRARY) -> str:
  """The version string of libespeak-ng, e.g. "1.51"."""
  lib = _load(library)
  lib.espeak_Info.restype = ctypes.c_char_p
  lib.espeak_Info.argtypes = [ctypes.c_void_p]
  return lib.espeak_Info(None).decode("utf-8")


def is_clipped(samples: np.ndarray) -> bool:
  """Whether int16 ``samples`` reach full scale, i.e. espeak saturated them."""
  return bool(samples.size) and int(np.abs(samples.astype(np.int32)).max()) >= INT16_LIMIT
