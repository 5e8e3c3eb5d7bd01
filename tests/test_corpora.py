"""data_prep.corpora on tiny corpora written by the tests in the published layouts."""
import json
import os

import numpy as np
import pytest
import soundfile as sf

from data_prep import corpora
from kws_tf import audio


def write_audio(path, seconds=0.1, rate=16000):
  """A short real sine file (WAV or FLAC by the extension) at ``path``."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  t = np.arange(int(seconds * rate)) / rate
  sf.write(str(path), (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate)


def write_bytes(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def by_id(utterances):
  return {u.id: u for u in utterances}


@pytest.fixture
def vivos(tmp_path):
  root = tmp_path / "vivos"
  train = root / "train"
  for utt in ["VIVOSSPK01_R001", "VIVOSSPK01_R002", "VIVOSSPK01_R004"]:
    write_audio(train / "waves" / "VIVOSSPK01" / f"{utt}.wav")
  for utt in ["VIVOSSPK02_R001", "VIVOSSPK02_R002"]:
    write_audio(train / "waves" / "VIVOSSPK02" / f"{utt}.wav")
  write_bytes(train / "prompts.txt", (
      "VIVOSSPK01_R001 KHÔNG CÓ GÌ\n"
      "VIVOSSPK01_R002 TÔI LÀ NGƯỜI  \n"
      "\n"
      "VIVOSSPK01_R003 WAV BỊ THIẾU\n"
      "VIVOSSPK01_R004 ...\n").encode("utf-8")
      + b"VIVOSSPK02_R002 \xff\xfe KH\n")
  write_bytes(train / "genders.txt", b"VIVOSSPK01 m\nVIVOSSPK02 f\n")
  test = root / "test"
  write_audio(test / "waves" / "VIVOSDEV01" / "VIVOSDEV01_R001.wav")
  write_bytes(test / "prompts.txt", b"\xef\xbb\xbfVIVOSDEV01_R001 M\xe1\xbb\x98T\r\n")
  (root / "not_a_split").mkdir()
  return root


def test_vivos_train(vivos):
  utterances = corpora.read_vivos(str(vivos), ["train"])
  assert [u.id for u in utterances] == [
      "VIVOSSPK01_R001", "VIVOSSPK01_R002", "VIVOSSPK01_R003", "VIVOSSPK01_R004",
      "VIVOSSPK02_R001", "VIVOSSPK02_R002"]
  u = by_id(utterances)
  good = u["VIVOSSPK01_R001"]
  assert good == corpora.Utterance(
      id="VIVOSSPK01_R001",
      audio_path=str(vivos / "train" / "waves" / "VIVOSSPK01" / "VIVOSSPK01_R001.wav"),
      text="KHÔNG CÓ GÌ", speaker="VIVOSSPK01", split="train", duration=None, problem=None)
  assert os.path.isabs(good.audio_path)
  assert u["VIVOSSPK01_R002"].text == "TÔI LÀ NGƯỜI"
  missing = u["VIVOSSPK01_R003"]
  assert missing.problem == "missing audio" and missing.text == "WAV BỊ THIẾU"
  assert missing.speaker == "VIVOSSPK01"
  assert missing.audio_path.endswith(os.path.join("waves", "VIVOSSPK01", "VIVOSSPK01_R003.wav"))
  assert u["VIVOSSPK01_R004"].problem == "empty transcript"
  assert u["VIVOSSPK01_R004"].text == "..."
  assert u["VIVOSSPK02_R001"].problem == "missing transcript"
  assert u["VIVOSSPK02_R001"].text is None
  assert u["VIVOSSPK02_R002"].problem == "non-utf8 transcript"
  assert u["VIVOSSPK02_R002"].text is None


def test_vivos_flac_audio_is_read_not_missing(vivos):
  flac = vivos / "train" / "waves" / "VIVOSSPK01" / "VIVOSSPK01_R003.flac"
  write_audio(flac, seconds=0.25)
  u = by_id(corpora.read_vivos(str(vivos), ["train"]))["VIVOSSPK01_R003"]
  assert u.problem is None and u.audio_path == str(flac)
  samples, rate = sf.read(str(flac), dtype="float32")
  np.testing.assert_array_equal(audio.read_audio(u.audio_path, rate), samples)
  write_audio(flac.with_suffix(".wav"))
  with pytest.raises(ValueError, match="VIVOSSPK01_R003' occurs twice"):
    corpora.read_vivos(str(vivos), ["train"])


def test_vivos_bom_and_crlf_and_split_order(vivos):
  utterances = corpora.read_vivos(str(vivos), ["test", "train"])
  assert utterances[0].id == "VIVOSDEV01_R001"
  assert utterances[0].text == "MỘT" and utterances[0].problem is None
  assert [u.split for u in utterances] == ["test"] + ["train"] * 6


def test_vivos_unknown_split_lists_available(vivos):
  with pytest.raises(ValueError, match="'dev'.*available: test, train"):
    corpora.read_vivos(str(vivos), ["dev"])


def test_missing_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope"):
    corpora.read_vivos(str(tmp_path / "nope"), ["train"])
  with pytest.raises(FileNotFoundError, match="nope"):
    corpora.read_librispeech(str(tmp_path / "nope"), ["train"])
  with pytest.raises(FileNotFoundError, match="nope"):
    corpora.read_manifest(str(tmp_path / "nope"), ["train"])


def test_vivos_same_wav_under_two_speakers_is_an_error(vivos):
  write_audio(vivos / "train" / "waves" / "VIVOSSPK02" / "VIVOSSPK01_R001.wav")
  with pytest.raises(ValueError, match="VIVOSSPK01_R001"):
    corpora.read_vivos(str(vivos), ["train"])


def test_vivos_prompt_listed_twice_is_an_error(vivos):
  with open(vivos / "test" / "prompts.txt", "ab") as f:
    f.write(b"VIVOSDEV01_R001 AGAIN\n")
  with pytest.raises(ValueError, match=r"prompts.txt:2: id 'VIVOSDEV01_R001'"):
    corpora.read_vivos(str(vivos), ["test"])


@pytest.fixture
def librispeech(tmp_path):
  root = tmp_path / "LibriSpeech"
  layout = {
      "train-clean-100": ("19", "198", 2),
      "train-other-500": ("20", "205", 1),
      "dev-clean": ("1272", "128104", 1),
      "dev-other": ("116", "288045", 1),
      "test-clean": ("1089", "134686", 1),
  }
  for split, (speaker, chapter, count) in layout.items():
    folder = root / split / speaker / chapter
    lines = []
    for i in range(count):
      utt = f"{speaker}-{chapter}-{i:04d}"
      write_audio(folder / f"{utt}.flac")
      lines.append(f"{utt} WORDS OF {split.upper()} {i}\n")
    write_bytes(folder / f"{speaker}-{chapter}.trans.txt", "".join(lines).encode())
  write_bytes(root / "SPEAKERS.TXT", b"; nothing\n")
  return root


def test_librispeech_train_merges_prefixed_folders(librispeech):
  utterances = corpora.read_librispeech(str(librispeech), ["train"])
  assert [(u.split, u.id) for u in utterances] == [
      ("train-clean-100", "19-198-0000"), ("train-clean-100", "19-198-0001"),
      ("train-other-500", "20-205-0000")]
  first = utterances[0]
  assert first.text == "WORDS OF TRAIN-CLEAN-100 0"
  assert first.speaker == "19" and first.problem is None
  chapter = librispeech / "train-clean-100" / "19" / "198"
  assert first.audio_path == str(chapter / "19-198-0000.flac")


def test_librispeech_dev_and_exact_split(librispeech):
  dev = corpora.read_librispeech(str(librispeech), ["dev"])
  assert [u.split for u in dev] == ["dev-clean", "dev-other"]
  exact = corpora.read_librispeech(str(librispeech), ["dev-clean"])
  assert [u.id for u in exact] == ["1272-128104-0000"]
  both = corpora.read_librispeech(str(librispeech), ["dev", "dev-clean"])
  assert [u.id for u in both] == [u.id for u in dev]


def test_librispeech_missing_flac_and_missing_transcript(librispeech):
  folder = librispeech / "test-clean" / "1089" / "134686"
  os.remove(folder / "1089-134686-0000.flac")
  write_audio(folder / "1089-134686-0009.flac")
  u = by_id(corpora.read_librispeech(str(librispeech), ["test"]))
  assert u["1089-134686-0000"].problem == "missing audio"
  assert u["1089-134686-0000"].audio_path == str(folder / "1089-134686-0000.flac")
  assert u["1089-134686-0009"].problem == "missing transcript"
  assert u["1089-134686-0009"].text is None


def test_librispeech_unknown_split_lists_available(librispeech):
  with pytest.raises(ValueError) as caught:
    corpora.read_librispeech(str(librispeech), ["valid"])
  message = str(caught.value)
  assert "'valid'" in message
  assert "dev-clean, dev-other, test-clean, train-clean-100, train-other-500" in message


def write_manifest(path, records, extra=b""):
  lines = b"".join(json.dumps(r, ensure_ascii=False).encode() + b"\n" for r in records)
  write_bytes(path, lines + extra)


@pytest.fixture
def manifests(tmp_path):
  root = tmp_path / "manifests"
  outside = tmp_path / "elsewhere" / "far.wav"
  for name in ["audio/a.wav", "audio/b.wav", "clips/x/utt.wav", "clips/y/utt.wav", "dev/d1.wav",
               "dev/d2.wav"]:
    write_audio(root / name)
  write_audio(outside)
  write_manifest(root / "train.jsonl", [
      {"audio_filepath": "audio/a.wav", "text": "xin chào", "duration": 0.1},
      {"audio_filepath": "clips/x/utt.wav", "text": "một", "speaker": 7},
      {"audio_filepath": "clips/y/utt.wav", "text": "hai"},
      {"audio_filepath": str(outside), "text": "xa"},
      {"audio_filepath": "audio/gone.wav", "text": "mất"},
      {"audio_filepath": "audio/b.wav"},
  ], extra=b"\n")
  write_manifest(root / "dev_clean.jsonl", [{"audio_filepath": "dev/d1.wav", "text": ""}])
  write_manifest(root / "dev-other.json", [], extra=(
      b'{"audio_filepath": "dev/d2.wav", "text": "\xff\xfe ok", "duration": 2}\n'))
  write_bytes(root / "notes.txt", b"not a manifest\n")
  return root


def test_manifest_train(manifests, tmp_path):
  utterances = corpora.read_manifest(str(manifests), ["train"])
  assert [u.id for u in utterances] == [
      "a", "b", "clips_x_utt", "clips_y_utt", "far", "gone"]
  first, no_text = utterances[0], utterances[1]
  assert first.audio_path == str(manifests / "audio" / "a.wav")
  assert first.text == "xin chào" and first.duration == 0.1 and first.problem is None
  assert first.split == "train" and first.speaker == ""
  assert no_text.problem == "missing transcript"
  u = {x.id: x for x in utterances[2:]}
  assert u["clips_x_utt"].speaker == "7" and u["clips_x_utt"].duration is None
  assert u["far"].audio_path == str(tmp_path / "elsewhere" / "far.wav")
  assert u["far"].problem is None
  assert u["gone"].problem == "missing audio"


def test_manifest_dev_merges_and_reports_problems(manifests):
  utterances = corpora.read_manifest(str(manifests), ["dev"])
  assert [(u.split, u.id) for u in utterances] == [("dev-other", "d2"), ("dev_clean", "d1")]
  non_utf8, empty = utterances
  assert non_utf8.problem == "non-utf8 transcript" and non_utf8.text is None
  assert non_utf8.duration == 2.0 and isinstance(non_utf8.duration, float)
  assert empty.problem == "empty transcript" and empty.text == ""


def test_manifest_single_file_and_unknown_split(manifests):
  utterances = corpora.read_manifest(str(manifests / "dev_clean.jsonl"), ["dev"])
  assert [u.id for u in utterances] == ["d1"]
  with pytest.raises(ValueError, match="available: dev-other, dev_clean, train"):
    corpora.read_manifest(str(manifests), ["test"])


def test_manifest_stem_collision_across_splits(tmp_path):
  root = tmp_path / "m"
  write_audio(root / "train" / "a.wav")
  write_audio(root / "dev" / "a.wav")
  write_manifest(root / "train.jsonl", [{"audio_filepath": "train/a.wav", "text": "x"}])
  write_manifest(root / "dev.jsonl", [{"audio_filepath": "dev/a.wav", "text": "y"}])
  both = corpora.read_corpus("manifest", str(root), ["train", "dev"])
  assert [(u.split, u.id) for u in both] == [("dev", "dev_a"), ("train", "train_a")]
  assert [u.id for u in corpora.read_corpus("manifest", str(root), ["train"])] == ["a"]


@pytest.mark.parametrize("extension", [".wav", ".flac"])
def test_manifest_segments_of_one_file_are_read_as_their_slices(tmp_path, extension):
  rate = 16000
  long_file = tmp_path / "m" / f"talk{extension}"
  os.makedirs(long_file.parent)
  noise = np.random.default_rng(1).uniform(-0.5, 0.5, 3 * rate).astype(np.float32)
  sf.write(str(long_file), noise, rate, subtype="PCM_16")
  write_manifest(tmp_path / "m" / "train.jsonl", [
      {"audio_filepath": long_file.name, "text": "một", "offset": 0.5, "duration": 1.0},
      {"audio_filepath": long_file.name, "text": "hai", "offset": 1.75, "duration": 0.8},
      {"audio_filepath": long_file.name, "text": "ba", "offset": 2.5},
  ])
  utterances = corpora.read_corpus("manifest", str(tmp_path / "m"), ["train"])
  assert [(u.id, u.offset, u.duration) for u in utterances] == [
      ("talk-0000500", 0.5, 1.0), ("talk-0001750", 1.75, 0.8), ("talk-0002500", 2.5, None)]
  for u, (start, stop) in zip(utterances, [(8000, 24000), (28000, 40800), (40000, 48000)]):
    expected, _ = sf.read(str(long_file), start=start, stop=stop, dtype="int16")
    segment = audio.read_audio(u.audio_path, rate, keep_int16=True,
                               offset=u.offset, duration=u.duration)
    np.testing.assert_array_equal(segment, expected)


def test_manifest_segment_past_the_end_of_its_file_is_truncated(tmp_path):
  path = tmp_path / "a.wav"
  write_audio(path, seconds=1.0)
  assert len(audio.read_audio(path, offset=0.5, duration=0.51)) == 8000  # rounding slack
  for offset, duration in [(0.5, 0.6), (1.2, None)]:
    with pytest.raises(audio.AudioError, match="not inside the file's 1.000 s") as error:
      audio.read_audio(path, offset=offset, duration=duration)
    assert error.value.reason == "truncated"


@pytest.mark.parametrize("bad_line,match", [
    (b'{"audio_filepath": "a.wav", "text": "x"\n', "malformed JSON"),
    (b'["a.wav"]\n', "audio_filepath"),
    (b'{"text": "x"}\n', "audio_filepath"),
    (b'{"audio_filepath": "a.wav", "text": 5}\n', "text must be a string"),
    (b'{"audio_filepath": "a.wav", "duration": "long"}\n', "duration must be a number"),
    (b'{"audio_filepath": "a.wav", "duration": 0}\n', "duration must be a number > 0"),
    (b'{"audio_filepath": "a.wav", "offset": -1.5}\n', "offset must be a number >= 0"),
    (b'{"audio_filepath": "a.wav", "offset": NaN}\n', "offset must be a number >= 0"),
])
def test_manifest_malformed_line_names_file_and_line(tmp_path, bad_line, match):
  path = tmp_path / "train.jsonl"
  write_manifest(path, [{"audio_filepath": "a.wav", "text": "x"}], extra=b"\n" + bad_line)
  with pytest.raises(ValueError, match=rf"train.jsonl:3: .*{match}"):
    corpora.read_manifest(str(path), ["train"])


def test_read_corpus_dispatch_and_sorting(vivos, librispeech):
  utterances = corpora.read_corpus("vivos", str(vivos), "train, test")
  assert [u.split for u in utterances] == ["test"] + ["train"] * 6
  utterances = corpora.read_corpus("librispeech", str(librispeech), ["train", "dev"])
  keys = [(u.split, u.id) for u in utterances]
  assert keys == sorted(keys) and len(keys) == 5


def test_read_corpus_duplicate_ids_across_splits(vivos):
  write_audio(vivos / "test" / "waves" / "VIVOSSPK01" / "VIVOSSPK01_R001.wav")
  with pytest.raises(ValueError, match=r"VIVOSSPK01_R001 in \['test', 'train'\]"):
    corpora.read_corpus("vivos", str(vivos), ["train", "test"])


def test_read_corpus_unknown_corpus(vivos):
  with pytest.raises(ValueError, match="known: vivos, librispeech, manifest"):
    corpora.read_corpus("commonvoice", str(vivos), ["train"])


def test_parse_splits():
  assert corpora.parse_splits("train,test") == ["train", "test"]
  assert corpora.parse_splits(" train , dev-clean,,train ") == ["train", "dev-clean"]
  with pytest.raises(ValueError):
    corpora.parse_splits(" , ")


def test_read_ctm_globs_comments_and_sorting(tmp_path):
  write_bytes(tmp_path / "ali" / "a.ctm", (
      ";; aligned by a test\n"
      "utt1 1 0.50 0.25 là 0.9\n"
      "\n"
      "utt1 1 0.10 0.30 tôi\n").encode())
  write_bytes(tmp_path / "ali" / "b.ctm", "utt2 A 1.0 0.5 không\n".encode())
  write_bytes(tmp_path / "ali" / "c.txt", b"utt3 1 0 1 ignored\n")
  pattern = str(tmp_path / "ali" / "*.ctm")
  alignments = corpora.read_ctm([pattern, str(tmp_path / "ali" / "a.ctm")])
  assert alignments == {
      "utt1": [corpora.Word(0.10, 0.40, "tôi"), corpora.Word(0.50, 0.75, "là")],
      "utt2": [corpora.Word(1.0, 1.5, "không")],
  }


@pytest.mark.parametrize("bad_line,match", [
    (b"utt1 1 0.5 word\n", "expected 5 or 6 fields"),
    (b"utt1 1 zero 0.2 word\n", "must be numbers"),
    (b"utt1 1 0.5 -0.2 x\n", "negative"),
    (b"utt1 1 0.5 0.2 \xff\n", "not UTF-8"),
])
def test_read_ctm_malformed_line(tmp_path, bad_line, match):
  path = tmp_path / "x.ctm"
  write_bytes(path, b"utt1 1 0.0 0.5 ok\n" + bad_line)
  with pytest.raises(ValueError, match=rf"x.ctm:2: .*{match}"):
    corpora.read_ctm([str(path)])


def test_read_ctm_pattern_matching_nothing(tmp_path):
  with pytest.raises(FileNotFoundError, match="nothing"):
    corpora.read_ctm([str(tmp_path / "nothing*.ctm")])


def test_manifest_listing_one_file_twice_is_a_duplicate_id(tmp_path):
  write_audio(tmp_path / "a.wav")
  write_manifest(tmp_path / "train.jsonl", [{"audio_filepath": "a.wav", "text": "x"}] * 2)
  with pytest.raises(ValueError, match=r"a-0000000 in \['train', 'train'\]"):
    corpora.read_corpus("manifest", str(tmp_path), ["train"])
