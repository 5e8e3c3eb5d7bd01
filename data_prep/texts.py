"""Vietnamese sentences read at run time from the system's gettext catalogues.

Debian packages install their Vietnamese translations as compiled gettext
catalogues (``/usr/share/locale/vi/LC_MESSAGES/*.mo``): thousands of short
Vietnamese sentences written by people, with a vocabulary and style (software
messages) unlike ``data_prep.lexicon``'s grammar. They are read with the
standard library's ``gettext``; nothing is copied into the project.

A sentence is one clause of a translation (split at punctuation), lower case
NFC, of ``lexicon.MIN_WORDS``..``lexicon.MAX_WORDS`` words that are all
Vietnamese syllables (initial consonants, one to three vowels, final
consonants; English words and abbreviations are out, since espeak-ng spells
them letter by letter). ``half`` splits the sentences by a
hash into two disjoint sets, so that a training corpus and a test set can both
draw from the source without sharing a sentence.
"""
import gettext
import glob
import os
import re
import struct
import unicodedata
import zlib
from typing import List, Optional

from data_prep import lexicon

LOCALE_DIR = "/usr/share/locale/vi/LC_MESSAGES"
HALVES = ("train", "test")
# printf / Python placeholders ("%i", "%lu", "%(name)s", "{0}") end a clause too.
_PLACEHOLDER = re.compile(r"%(\([^)]*\))?[-+ #0-9.*]*(hh|h|ll|l|L|z|j|t)?[a-zA-Z]|\{[^}]*\}")
_CLAUSE_END = re.compile(r"[.,:;!?()\[\]{}\"“”'`\n\t/|<>=*+&@#%_~^$0-9\\-]+")
_VOWELS = "aàáảãạăằắẳẵặâầấẩẫậeèéẻẽẹêềếểễệiìíỉĩịoòóỏõọôồốổỗộơờớởỡợuùúủũụưừứửữựyỳýỷỹỵ"
# One Vietnamese syllable: initial consonant(s), one to three vowels, final consonant(s).
_WORD = re.compile(f"(ngh|ng|nh|ch|gh|gi|kh|ph|qu|th|tr|[bcdđghklmnprstvx])?"
                   f"[{_VOWELS}]{{1,3}}(ch|ng|nh|[cmnpt])?")


def sentences(locale_dir: str = LOCALE_DIR, half: Optional[str] = None) -> List[str]:
  """The distinct sentences of every catalogue in ``locale_dir``, sorted.

  Args:
    half: None for all, or ``train`` / ``test``: the sentences whose CRC-32 is
      even / odd.

  Raises:
    FileNotFoundError naming ``locale_dir`` when it holds no readable catalogue.
  """
  if half is not None and half not in HALVES:
    raise ValueError(f"half must be one of {HALVES} or None, got {half!r}")
  found = set()
  paths = sorted(glob.glob(os.path.join(locale_dir, "*.mo")))
  read = 0
  for path in paths:
    try:
      with open(path, "rb") as f:
        catalogue = gettext.GNUTranslations(f)
    except (OSError, UnicodeError, struct.error) as error:  # bad magic, bytes or length
      print(f"warning: skipping {path}: {error}")
      continue
    read += 1
    for message in catalogue._catalog.values():  # the public API looks messages up one by one
      if not isinstance(message, str):
        continue
      message = _PLACEHOLDER.sub(".", unicodedata.normalize("NFC", message))
      for clause in _CLAUSE_END.split(message.lower()):
        words = clause.split()
        if (lexicon.MIN_WORDS <= len(words) <= lexicon.MAX_WORDS
            and all(_WORD.fullmatch(w) for w in words)):
          found.add(" ".join(words))
  if not read:
    raise FileNotFoundError(
        f"no readable Vietnamese gettext catalogue (*.mo) in {locale_dir}: install Debian "
        "packages with translations (e.g. coreutils, apt) without excluding /usr/share/locale")
  chosen = sorted(found)
  if half is not None:
    parity = HALVES.index(half)
    chosen = [s for s in chosen if zlib.crc32(s.encode("utf-8")) % 2 == parity]
  return chosen
