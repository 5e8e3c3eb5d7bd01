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

``documentation_sentences`` reads another source, which no corpus and no test
set reads: the text of Debian's Vietnamese documentation packages, the man
pages of ``manpages-vi`` (``/usr/share/man/vi``, groff) and the Debian New
Maintainers' Guide of ``maint-guide-vi`` (plain text). ``kws-build-lm`` builds
the CTC decoder's language model from it.
"""
import gettext
import glob
import gzip
import os
import re
import struct
import unicodedata
import zlib
from typing import Iterable, List, Optional, Set

from data_prep import lexicon

LOCALE_DIR = "/usr/share/locale/vi/LC_MESSAGES"
HALVES = ("train", "test")
MAN_DIR = "/usr/share/man/vi"
MAINT_GUIDE = "/usr/share/doc/maint-guide-vi/maint-guide.vi.txt.gz"
# printf / Python placeholders ("%i", "%lu", "%(name)s", "{0}") end a clause too.
_PLACEHOLDER = re.compile(r"%(\([^)]*\))?[-+ #0-9.*]*(hh|h|ll|l|L|z|j|t)?[a-zA-Z]|\{[^}]*\}")
_CLAUSE_END = re.compile(r"[.,:;!?()\[\]{}\"“”'`\n\t/|<>=*+&@#%_~^$0-9\\-]+")
_VOWELS = "aàáảãạăằắẳẵặâầấẩẫậeèéẻẽẹêềếểễệiìíỉĩịoòóỏõọôồốổỗộơờớởỡợuùúủũụưừứửữựyỳýỷỹỵ"
# One Vietnamese syllable: initial consonant(s), one to three vowels, final consonant(s).
_WORD = re.compile(f"(ngh|ng|nh|ch|gh|gi|kh|ph|qu|th|tr|[bcdđghklmnprstvx])?"
                   f"[{_VOWELS}]{{1,3}}(ch|ng|nh|[cmnpt])?")
# groff: font changes and zero-width escapes vanish, any other escape and every
# request line (".TP", ".B x") end a clause.
_GROFF_FONT = re.compile(r"\\f(\[[^\]]*\]|\(..|.)|\\[,/&]")
_GROFF_ESCAPE = re.compile(r"\\(\(..|\[[^\]]*\]|\*.|.)")


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
      for words in _clauses(_PLACEHOLDER.sub(".", unicodedata.normalize("NFC", message))):
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


def documentation_sentences(man_dir: str = MAN_DIR, guide: str = MAINT_GUIDE,
                            locale_dir: str = LOCALE_DIR) -> List[str]:
  """The distinct sentences of Debian's Vietnamese documentation (module docstring), sorted.

  A sentence here is a run of at least two Vietnamese syllables within a
  clause: a word that is not a syllable (an English name, a command) ends it
  as punctuation does. Runs that hold a sentence of the gettext catalogues in
  ``locale_dir`` (either half, as ``sentences`` reads them) are left out, so
  nothing a corpus or the robustness set speaks is in it; without catalogues
  there is nothing to leave out.

  Args:
    man_dir: man pages, ``*/*.gz`` or uncompressed.
    guide: the guide's plain text, gzip or uncompressed.

  Raises:
    FileNotFoundError naming both places when neither holds any text.
  """
  documents = [_groff_text(_read_text(path))
               for path in sorted(glob.glob(os.path.join(man_dir, "*", "*")))
               if os.path.isfile(path)]
  if os.path.isfile(guide):
    documents.append(_read_text(guide))
  if not documents:
    raise FileNotFoundError(
        f"no Vietnamese documentation in {man_dir} or {guide}: install the Debian packages "
        "manpages-vi and maint-guide-vi (scripts/setup.sh does) without excluding "
        "/usr/share/man or /usr/share/doc")
  found = set()
  for document in documents:
    for paragraph in document.split("\n\n"):  # lines of a paragraph wrap its clauses
      for words in _clauses(unicodedata.normalize("NFC", " ".join(paragraph.split()))):
        found.update(_syllable_runs(words))
  try:
    spoken = set(sentences(locale_dir))
  except FileNotFoundError:
    spoken = set()
  return sorted(s for s in found if not _holds_any(s.split(), spoken))


def _clauses(message: str) -> Iterable[List[str]]:
  """The words of each clause of ``message`` (NFC): lower case, split at punctuation."""
  for clause in _CLAUSE_END.split(message.lower()):
    yield clause.split()


def _syllable_runs(words: List[str]) -> List[str]:
  """The runs of at least two consecutive Vietnamese syllables of ``words``, joined."""
  runs, current = [], []
  for word in words + [""]:
    if word and _WORD.fullmatch(word):
      current.append(word)
      continue
    if len(current) >= 2:
      runs.append(" ".join(current))
    current = []
  return runs


def _holds_any(words: List[str], sentence_set: Set[str]) -> bool:
  """Whether some ``lexicon.MIN_WORDS``..``MAX_WORDS`` words of ``words`` in a row are in the set."""
  for start in range(len(words)):
    for end in range(start + lexicon.MIN_WORDS, min(len(words), start + lexicon.MAX_WORDS) + 1):
      if " ".join(words[start:end]) in sentence_set:
        return True
  return False


def _read_text(path: str) -> str:
  """A UTF-8 text file, gzip-compressed when its name ends in ``.gz``; bad bytes replaced."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rt", encoding="utf-8", errors="replace") as f:
    return f.read()


def _groff_text(source: str) -> str:
  """The running text of a groff man page: request lines become paragraph breaks,
  font changes vanish, other escapes become clause ends."""
  lines = []
  for line in source.splitlines():
    if line.startswith((".", "'")):
      lines.append("")
    else:
      lines.append(_GROFF_ESCAPE.sub(" . ", _GROFF_FONT.sub("", line)))
  return "\n".join(lines)
