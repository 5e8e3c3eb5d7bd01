"""kws_tf.text: normalisation and the character vocabulary."""
import unicodedata

import pytest

from kws_tf import text


@pytest.mark.parametrize("raw,expected", [
    ("Xin chào, THẾ GIỚI!", "xin chào thế giới"),
    ("  tôi's\tnhà\n", "tôi's nhà"),
    ("a_b-c—d…e 12", "a b c d e 12"),
    ("?!.,;", ""),
])
def test_normalize(raw, expected):
  assert text.normalize(raw) == expected


def test_normalize_composes_tone_marks_into_one_code_point():
  decomposed = unicodedata.normalize("NFD", "NGƯỜI Có")
  assert len(decomposed) > len("NGƯỜI Có")
  assert text.normalize(decomposed) == "người có"
  assert len(text.normalize(decomposed)) == len("người có")
  assert text.normalize(text.normalize(decomposed)) == "người có"


def test_vocabulary_encodes_normalised_text_and_names_unknown_characters():
  vocabulary = text.Vocabulary.from_texts(["Có KHÔNG", "và"])
  assert vocabulary.symbols[:2] == [text.BLANK, " "]
  assert vocabulary.decode(vocabulary.encode("CÓ, và!")) == "có và"
  assert vocabulary.encode("có", normalized=True) == vocabulary.encode("Có")
  assert vocabulary.unknown("Cá xyz") == ["x", "y", "z", "á"]  # "á" is one symbol
  with pytest.raises(KeyError, match="not in the vocabulary"):
    vocabulary.encode("cá")


def test_default_vocabulary_covers_every_normalised_vietnamese_letter():
  vocabulary = text.Vocabulary.read(text.DEFAULT_VOCABULARY)
  assert vocabulary.symbols[:3] == [text.BLANK, " ", "'"]
  tones = ["", "\u0300", "\u0301", "\u0309", "\u0303", "\u0323"]
  letters = [unicodedata.normalize("NFD", v + t) for v in "aăâeêioôơuưy" for t in tones]
  letters += list("bcdđghklmnpqrstvx")
  for spelled in letters + [letter.upper() for letter in letters]:
    assert vocabulary.unknown(spelled) == [], spelled
  assert len(vocabulary) == 1 + 2 + 12 * 6 + 17
  assert vocabulary.unknown("f j w z 0 9") == ["0", "9", "f", "j", "w", "z"]
  english = text.Vocabulary.read("english")
  assert english.unknown("It's a QUIZ") == [] and len(english) == 1 + 2 + 26


def test_vocabulary_file_is_one_symbol_per_line_in_id_order(tmp_path):
  path = tmp_path / "v.txt"
  path.write_text("<space>\nb\nố\n'\n", encoding="utf-8")
  vocabulary = text.Vocabulary.read(str(path))
  assert vocabulary.symbols == [text.BLANK, " ", "b", "ố", "'"]
  assert vocabulary.encode("Bố") == [2, 3]
  json_path = tmp_path / "vocab.json"
  vocabulary.save(str(json_path))
  assert text.Vocabulary.read(str(json_path)).symbols == vocabulary.symbols


@pytest.mark.parametrize("lines,match", [
    ("a\n\nb\n", ":2: '' is blank"),
    ("a\nab\n", ":2: 'ab' is not one character"),
    ("a\n \n", r":2: ' ' is blank \(the space is written <space>\)"),
    ("a\nB\n", ":2: 'B' never occurs in normalised text"),
    ("a\n,\n", ":2: ',' never occurs in normalised text"),
    ("a\nb\na\n", ":3: 'a' is already listed on line 1"),
    ("<blank>\na\n", ":1: <blank> is id 0 and is not listed"),
    ("", ": lists no symbol"),
])
def test_malformed_vocabulary_file_names_file_and_line(tmp_path, lines, match):
  path = tmp_path / "v.txt"
  path.write_text(lines, encoding="utf-8")
  with pytest.raises(ValueError, match=f"v.txt{match}"):
    text.Vocabulary.read(str(path))


def test_unknown_vocabulary_name_lists_the_shipped_ones():
  with pytest.raises(FileNotFoundError, match="neither a file nor one of english, vietnamese"):
    text.Vocabulary.read("klingon")


def test_out_of_vocabulary_characters_are_mapped_dropped_or_skip():
  vocabulary = text.Vocabulary.read("vietnamese")
  full_width_c, cedilla_c = "\uff43", "ç"
  transcript = text.normalize(f"cà phê {full_width_c}{cedilla_c}")
  assert vocabulary.fit(transcript, "map") == ("cà phê cc", cedilla_c + full_width_c)
  assert vocabulary.fit(transcript, "drop") == ("cà phê", cedilla_c + full_width_c)
  assert vocabulary.fit(transcript, "skip") == (None, cedilla_c + full_width_c)
  assert vocabulary.fit("wifi 5g", "map") == (None, "5fw")  # no fold for digits, f, w
  assert vocabulary.fit("wifi 5g", "drop") == ("ii g", "5fw")
  assert vocabulary.fit("2024", "drop") == (None, "024")  # nothing left
  assert vocabulary.fit("cà phê", "skip") == ("cà phê", "")
  with pytest.raises(ValueError, match="unknown oov policy"):
    vocabulary.fit("x", "guess")


def test_decode_composes_a_combining_mark_symbol_into_nfc():
  # A vocabulary may list a combining mark (normalize keeps a lone one): "a" then
  # U+0301 decodes to the one code point "á", as the corpus's NFC transcripts hold it.
  vocabulary = text.Vocabulary([text.BLANK, " ", "a", "c", "\u0301"])
  decoded = vocabulary.decode([3, 2, 4, 1, 2])
  assert decoded == "cá a" and len(decoded) == 4
  assert unicodedata.is_normalized("NFC", decoded)
