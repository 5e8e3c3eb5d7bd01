"""Vietnamese text: normalisation, the character vocabulary, keyword classes.

Normalisation is Unicode NFC (so every tone-marked letter such as "ố" is one
code point, hence one CTC symbol), lower case, punctuation other than the
apostrophe removed, runs of white space folded into one space.

The CTC character vocabulary is fixed before any transcript is read, so the
labels of an utterance never depend on which other files a corpus holds. The
CTC blank is id 0 (``BLANK_INDEX``). ``Vocabulary.read`` takes a shipped
vocabulary by name (``kws_tf/vocabularies/<name>.txt``: ``vietnamese``, the
default, and ``english``), a vocabulary file, or a ``vocab.json`` written by
``Vocabulary.save``.

A vocabulary file is UTF-8 text with one symbol per line, in id order from
id 1 (the blank is id 0 and is not listed). A symbol is one character as
``normalize`` emits it (lower case, NFC: "ố" is one code point); the space is
written ``<space>``. No blank lines, no comments.

``vietnamese.txt`` holds the space, the apostrophe, the 17 consonants of the
Vietnamese alphabet (b c d đ g h k l m n p q r s t v x) and its 12 vowels (a
ă â e ê i o ô ơ u ư y) with each of the five tone marks, in code-point
order: every character ``normalize`` leaves of Vietnamese text. f, j, w, z and
digits are not in it (``Vocabulary.fit`` decides what happens to them).
"""
import json
import os
import unicodedata
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

KEYWORDS = ("có", "là", "không", "một", "của", "và", "người", "những", "tôi")
NEGATIVE_LABEL = "negative"

BLANK = "<blank>"
BLANK_INDEX = 0
SPACE = "<space>"  # the space in a vocabulary file

VOCABULARIES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vocabularies")
DEFAULT_VOCABULARY = "vietnamese"
# What Vocabulary.fit does with characters outside the vocabulary.
OOV_POLICIES = ("map", "drop", "skip")


class _PunctuationToSpace(dict):
  """A ``str.translate`` table, filled as characters are first seen: letters,
  numbers, marks and the apostrophe map to themselves, anything else to a space."""

  def __missing__(self, code: int) -> int:
    char = chr(code)
    kept = char == "'" or unicodedata.category(char)[0] in "LNM"
    self[code] = code if kept else ord(" ")
    return self[code]


_PUNCTUATION_TO_SPACE = _PunctuationToSpace()


def normalize(text: str) -> str:
  """NFC, lower case, no punctuation but apostrophes, single spaces."""
  text = unicodedata.normalize("NFC", text).lower()
  return " ".join(text.translate(_PUNCTUATION_TO_SPACE).split())


def keyword_classes(keywords: Sequence[str] = KEYWORDS) -> List[str]:
  """Class names of the KWS task: the keywords, then "negative" last."""
  keywords = [normalize(k) for k in keywords]
  if len(set(keywords)) != len(keywords):
    raise ValueError(f"keywords repeat after normalisation: {keywords}")
  if any(not k or " " in k for k in keywords):
    raise ValueError(f"a keyword must be one word: {keywords}")
  return keywords + [NEGATIVE_LABEL]


class Vocabulary:
  """Character vocabulary for CTC: symbol <-> id, blank at ``BLANK_INDEX``."""

  def __init__(self, symbols: Sequence[str]):
    if not symbols or symbols[BLANK_INDEX] != BLANK:
      raise ValueError(f"the vocabulary must start with {BLANK!r}")
    if len(set(symbols)) != len(symbols):
      raise ValueError("the vocabulary repeats a symbol")
    self.symbols = list(symbols)
    self._ids: Dict[str, int] = {s: i for i, s in enumerate(self.symbols)}

  @classmethod
  def from_texts(cls, texts: Iterable[str]) -> "Vocabulary":
    """Every character of the normalised texts; space first, then code-point order.
    (Not for records: their vocabulary must not depend on the corpus, see ``read``.)"""
    chars = set()
    for text in texts:
      chars.update(normalize(text))
    chars.discard(" ")
    return cls([BLANK, " "] + sorted(chars))

  @classmethod
  def load(cls, path: str) -> "Vocabulary":
    """Reads a ``vocab.json`` written by :meth:`save`."""
    with open(path, encoding="utf-8") as f:
      data = json.load(f)
    if data.get("blank_index") != BLANK_INDEX:
      raise ValueError(f"{path}: blank_index must be {BLANK_INDEX}")
    return cls(data["symbols"])

  @classmethod
  def read(cls, name: str) -> "Vocabulary":
    """A vocabulary by name or path (module docstring): a file ending in
    ``.json`` is a ``vocab.json``, any other file a vocabulary file, and a bare
    name such as ``vietnamese`` a shipped one. FileNotFoundError when ``name``
    is none of these, ValueError naming the file and line of a malformed one."""
    path = find_vocabulary(name)
    if path.endswith(".json"):
      return cls.load(path)
    symbols, where = [BLANK], {}
    try:
      with open(path, encoding="utf-8-sig") as f:
        lines = f.read().splitlines()
    except UnicodeDecodeError as error:
      raise ValueError(f"{path}: not UTF-8 ({error})") from None
    for number, line in enumerate(lines, start=1):
      symbol = " " if line == SPACE else line
      if line == BLANK:
        problem = f"{BLANK} is id 0 and is not listed"
      elif not line.strip():
        problem = f"{line!r} is blank (the space is written {SPACE})"
      elif len(symbol) != 1:
        problem = f"{line!r} is not one character (one symbol per line)"
      elif symbol != " " and normalize(symbol) != symbol:
        problem = (f"{line!r} never occurs in normalised text (normalize gives "
                   f"{normalize(symbol)!r})")
      elif symbol in where:
        problem = f"{line!r} is already listed on line {where[symbol]}"
      else:
        where[symbol] = number
        symbols.append(symbol)
        continue
      raise ValueError(f"{path}:{number}: {problem}")
    if len(symbols) == 1:
      raise ValueError(f"{path}: lists no symbol")
    return cls(symbols)

  def save(self, path: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      json.dump(self.to_json(), f, ensure_ascii=False, indent=1)
    os.replace(tmp, path)

  def to_json(self) -> dict:
    return {"blank_index": BLANK_INDEX, "symbols": self.symbols}

  def __len__(self) -> int:
    return len(self.symbols)

  def unknown(self, text: str, normalized: bool = False) -> List[str]:
    """Characters of the normalised text that have no id (``normalized``: the
    caller already normalised it)."""
    return sorted({c for c in (text if normalized else normalize(text))
                   if c not in self._ids})

  def encode(self, text: str, normalized: bool = False) -> List[int]:
    """Normalised text -> ids (no blanks). Raises KeyError naming unknown
    characters. ``normalized``: the caller already normalised it."""
    text = text if normalized else normalize(text)
    missing = self.unknown(text, normalized=True)
    if missing:
      raise KeyError(f"characters not in the vocabulary: {missing}")
    return [self._ids[c] for c in text]

  def fold(self, char: str) -> Optional[str]:
    """The vocabulary characters that stand for ``char`` under ``--oov=map``,
    None when there are none: its Unicode compatibility decomposition (NFKD),
    recomposed and lower-cased, when every character of that is in the
    vocabulary ("ｃ" -> "c", "ﬁ" -> "fi"), else the same without its combining
    marks ("ç" -> "c", "ñ" -> "n", "ü" -> "u")."""
    decomposed = unicodedata.normalize("NFKD", char)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    for candidate in (decomposed, bare):
      candidate = unicodedata.normalize("NFC", candidate).lower()
      if candidate and all(c in self._ids for c in candidate):
        return candidate
    return None

  def fit(self, text: str, oov: str) -> Tuple[Optional[str], str]:
    """Normalised text -> (the text its labels hold, its characters outside the
    vocabulary in code-point order).

    ``oov`` (one of :data:`OOV_POLICIES`) says what happens to those characters:
    ``map`` replaces each by ``fold``, ``drop`` removes them, ``skip`` keeps
    nothing. The text is None (skip the utterance) under ``skip``, under
    ``map`` when a character does not fold, and when nothing is left.
    """
    if oov not in OOV_POLICIES:
      raise ValueError(f"unknown oov policy {oov!r}; known: {', '.join(OOV_POLICIES)}")
    unknown = "".join(self.unknown(text, normalized=True))
    if not unknown:
      return text, ""
    if oov == "skip":
      return None, unknown
    if oov == "map":
      folds = {c: self.fold(c) for c in unknown}
      if None in folds.values():
        return None, unknown
      text = "".join(folds.get(c, c) for c in text)
    else:
      text = "".join(c for c in text if c not in unknown)
    return " ".join(text.split()) or None, unknown

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text in NFC; blanks are dropped (no CTC collapsing here). NFC
    composes a symbol that is a combining mark (a vocabulary may list one)
    with the letter before it."""
    return unicodedata.normalize(
        "NFC", "".join(self.symbols[i] for i in ids if i != BLANK_INDEX))


def find_vocabulary(name: str) -> str:
  """The file of vocabulary ``name``: a path to an existing file as it is, else
  a bare name (``vietnamese`` or ``vietnamese.txt``) looked up in ``VOCABULARIES``.

  FileNotFoundError naming both places when neither holds it.
  """
  if os.path.isfile(name):
    return name
  if os.sep not in name and "/" not in name:
    candidate = os.path.join(VOCABULARIES, name if name.endswith(".txt") else name + ".txt")
    if os.path.isfile(candidate):
      return candidate
  shipped = sorted(os.path.splitext(n)[0] for n in os.listdir(VOCABULARIES))
  raise FileNotFoundError(f"vocabulary not found: {name} (neither a file nor one of "
                          f"{', '.join(shipped)} in {VOCABULARIES})")
