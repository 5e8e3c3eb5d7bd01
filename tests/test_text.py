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
