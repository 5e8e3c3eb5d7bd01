"""Vietnamese text: normalisation, the character vocabulary, keyword classes.

Normalisation is Unicode NFC (so every tone-marked letter such as "ố" is one
code point, hence one CTC symbol), lower case, punctuation other than the
apostrophe removed, runs of white space folded into one space.

The character vocabulary puts the CTC blank at index 0 (``BLANK_INDEX``),
the space at index 1 and the other characters after it in code-point order.
"""
import json
import os
import unicodedata
from typing import Dict, Iterable, List, Sequence

KEYWORDS = ("có", "là", "không", "một", "của", "và", "người", "những", "tôi")
NEGATIVE_LABEL = "negative"

BLANK = "<blank>"
BLANK_INDEX = 0


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
    """Every character of the normalised texts; space first, then code-point order."""
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

  def decode(self, ids: Iterable[int]) -> str:
    """Ids -> text; blanks are dropped (no CTC collapsing here)."""
    return "".join(self.symbols[i] for i in ids if i != BLANK_INDEX)
