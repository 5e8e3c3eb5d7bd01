"""The synthetic corpus: sentence generator, espeak-ng wrapper, the VIVOS-layout app."""
import os
import subprocess
import sys
import unicodedata

import numpy as np
import pytest
import soundfile

from data_prep import espeak
from data_prep import lexicon
from kws_tf.text import KEYWORDS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "test")


def test_generator_keyword_rates():
  sentences = lexicon.generate_sentences(np.random.default_rng(0), 4000)
  frequencies = lexicon.word_frequencies(sentences)
  total = sum(frequencies[k][0] for k in KEYWORDS)
  assert 0.10 <= total <= 0.20
  for keyword in KEYWORDS:
    token_share, sentence_share = frequencies[keyword]
    assert 0.005 <= token_share <= 0.05, keyword
    assert 0.05 <= sentence_share <= 0.5, keyword
  assert len(frequencies) > 400
  without_keywords = [s for s in sentences if not set(s.split()) & set(KEYWORDS)]
  assert 0.1 * len(sentences) < len(without_keywords) < 0.5 * len(sentences)


def test_generator_sentence_form():
  for sentence in lexicon.generate_sentences(np.random.default_rng(1), 500):
    words = sentence.split(" ")
    assert lexicon.MIN_WORDS <= len(words) <= lexicon.MAX_WORDS
    assert all(words), sentence  # single spaces, none leading or trailing
    assert sentence == unicodedata.normalize("NFC", sentence).lower()
    assert all(c == " " or c.isalpha() for c in sentence), sentence


def test_generator_is_deterministic():
  first = lexicon.generate_sentences(np.random.default_rng(7), 50)
  assert first == lexicon.generate_sentences(np.random.default_rng(7), 50)
  assert first != lexicon.generate_sentences(np.random.default_rng(8), 50)


def test_lexicon_covers_keywords():
  words = lexicon.lexicon_words()
  assert len(words) >= 300
  assert set(KEYWORDS) <= set(words)
  assert all(w == unicodedata.normalize("NFC", w).lower() and w.isalpha() for w in words)


def test_espeak_words_in_order_inside_audio():
  text = "hôm nay tôi có một người bạn và những con mèo của không là"
  synthesis = espeak.synthesize(text, espeak.Voice("vi+f2", rate_wpm=160))
  samples = synthesis.samples
  assert samples.dtype == np.int16 and samples.ndim == 1
  assert [w.word for w in synthesis.words] == text.split()
  for word, following in zip(synthesis.words, synthesis.words[1:]):
    assert word.end == following.start
  for word in synthesis.words:
    assert 0 <= word.start < word.end <= len(samples)
  audio = samples.astype(np.float64)
  first, last = synthesis.words[0].start, synthesis.words[-1].end
  inside = np.sqrt(np.mean(audio[first:last] ** 2))
  outside = np.concatenate([audio[:first], audio[last:]])
  assert outside.size == 0 or np.sqrt(np.mean(outside ** 2)) < 0.05 * inside
  assert len(samples) / espeak.SAMPLE_RATE > 0.15 * len(text.split())


def test_espeak_one_word_event_per_lexicon_word():
  words = lexicon.lexicon_words()
  voice = espeak.Voice("vi-vn-x-south+m3")
  for i in range(0, len(words), 15):
    chunk = " ".join(words[i:i + 15])
    assert [w.word for w in espeak.synthesize(chunk, voice).words] == chunk.split()


def test_espeak_missing_library_says_how_to_install():
  with pytest.raises(espeak.EspeakError, match="apt-get install espeak-ng"):
    espeak.library_version("libespeak-ng-missing.so.1")


def _run(out_dir, *flags, check=True):
  """Runs the app on a tiny corpus (3 speakers, 1 of them test, 3 utterances each)."""
  command = [sys.executable, "-m", "data_prep.synthesize_corpus", f"--out_dir={out_dir}",
             "--speakers=3", "--test_speakers=1", "--utterances_per_speaker=3", *flags]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  if check:
    assert result.returncode == 0, result.stderr
  return result


def _tree(root):
  """{relative path: bytes} of every file under ``root``."""
  files = {}
  for directory, _, names in os.walk(root):
    for name in names:
      path = os.path.join(directory, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, root)] = f.read()
  return files


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
  root = tmp_path_factory.mktemp("corpora")
  runs = {
      "cores1": ("--seed=0", "--cores=1"),
      "cores2": ("--seed=0", "--cores=2"),
      "seed1": ("--seed=1", "--cores=2"),
      "noisy": ("--seed=0", "--cores=2", "--snr_db=10"),
  }
  for name, flags in runs.items():
    _run(root / name, *flags)
  return {name: str(root / name) for name in runs}


def _read_lines(path):
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def test_corpus_has_vivos_layout(corpora):
  out = corpora["cores1"]
  speakers = {}
  for split in SPLITS:
    genders = dict(line.split(" ") for line in _read_lines(os.path.join(out, split, "genders.txt")))
    assert set(genders.values()) <= {"m", "f"}
    assert sorted(os.listdir(os.path.join(out, split, "waves"))) == sorted(genders)
    speakers[split] = set(genders)
    prompts = _read_lines(os.path.join(out, split, "prompts.txt"))
    ids = [line.split(" ", 1)[0] for line in prompts]
    assert ids == sorted(ids)
    waves = sorted(name[:-4] for spk in genders
                   for name in os.listdir(os.path.join(out, split, "waves", spk)))
    assert ids == waves
    for line in prompts:
      utt, text = line.split(" ", 1)
      assert text == text.upper() and text.split(" ") == text.split()
      info = soundfile.info(os.path.join(out, split, "waves", utt.rsplit("_", 1)[0], utt + ".wav"))
      assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
  assert len(speakers["train"]) == 2 and len(speakers["test"]) == 1
  assert not speakers["train"] & speakers["test"]


def test_alignments_cover_every_word_in_order(corpora):
  out = corpora["cores1"]
  for split in SPLITS:
    prompts = dict(
        line.split(" ", 1) for line in _read_lines(os.path.join(out, split, "prompts.txt")))
    aligned = {}
    for line in _read_lines(os.path.join(out, split, "alignments.ctm")):
      utt, channel, start, duration, word = line.split(" ")
      assert channel == "1" and len(start.split(".")[1]) == 3 and len(duration.split(".")[1]) == 3
      aligned.setdefault(utt, []).append((float(start), float(duration), word))
    assert sorted(aligned) == sorted(prompts)
    for utt, words in aligned.items():
      assert [w for _, _, w in words] == prompts[utt].split(" ")
      audio, rate = soundfile.read(
          os.path.join(out, split, "waves", utt.rsplit("_", 1)[0], utt + ".wav"), dtype="float64")
      previous_end = 0.0
      for start, duration, _ in words:
        assert duration > 0 and start >= previous_end - 1e-6
        previous_end = start + duration
      assert previous_end <= len(audio) / rate + 1e-3
      first, last = int(words[0][0] * rate), int(previous_end * rate)
      inside = np.sqrt(np.mean(audio[first:last] ** 2))
      outside = np.concatenate([audio[:first], audio[last:]])
      assert outside.size == 0 or np.sqrt(np.mean(outside ** 2)) < 0.05 * inside


def test_output_is_identical_for_any_cores(corpora):
  assert _tree(corpora["cores1"]) == _tree(corpora["cores2"])


def test_another_seed_gives_other_output(corpora):
  prompts = "train/prompts.txt"
  assert _tree(corpora["seed1"])[prompts] != _tree(corpora["cores1"])[prompts]


def test_snr_changes_audio_not_text(corpora):
  clean, noisy = _tree(corpora["cores1"]), _tree(corpora["noisy"])
  for split in SPLITS:
    for name in ("prompts.txt", "genders.txt", "alignments.ctm"):
      assert clean[f"{split}/{name}"] == noisy[f"{split}/{name}"]
  waves = [path for path in clean if path.endswith(".wav")]
  assert waves and all(clean[path] != noisy[path] for path in waves)


def test_rerun_resumes_and_refuses_other_flags(corpora, tmp_path):
  out = tmp_path / "corpus"
  _run(out, "--seed=0", "--cores=2")
  expected = _tree(out)
  # A killed run: one speaker without its done marker and with a wave missing.
  speaker = sorted(os.listdir(out / "train" / "waves"))[0]
  os.remove(out / ".done" / f"{speaker}.json")
  os.remove(out / "train" / "waves" / speaker / f"{speaker}_R002.wav")
  _run(out, "--seed=0", "--cores=1")
  assert _tree(out) == expected
  refused = _run(out, "--seed=5", check=False)
  assert refused.returncode != 0 and "--overwrite" in refused.stderr
  assert _tree(out) == expected
  _run(out, "--seed=1", "--overwrite")
  assert _tree(out) == _tree(corpora["seed1"])


_VARIANT_SCRIPT = """
import sys
import numpy as np
from data_prep import espeak
formants = ((100, 100, 100),) * 6
for name, pitch in (("kws_low", (70, 90)), ("kws_high", (200, 240))):
  variant = espeak.Variant(name, "male", pitch, formants, breath=(0, 1, 2, 2, 2, 2, 2, 1),
                           echo=(60, 10), tone=((600, 120), (1200, 100), (2000, 80)))
  voice = espeak.Voice("vi+" + name, rate_wpm=150, pitch=50, pitch_range=10, variant=variant)
  np.save(sys.argv[1] + "/" + name + ".npy", espeak.synthesize("tôi là người", voice).samples)
"""


def test_made_variants_set_the_pitch_and_repeat_exactly(tmp_path):
  """A made variant's pitch range moves the voice's F0 (librosa's YIN), and a
  fresh process gives the same samples again."""
  import librosa
  runs = []
  for run in ("a", "b"):
    (tmp_path / run).mkdir()
    subprocess.run([sys.executable, "-c", _VARIANT_SCRIPT, str(tmp_path / run)], cwd=REPO,
                   check=True, capture_output=True)
    runs.append({name: np.load(tmp_path / run / f"{name}.npy") for name in ("kws_low", "kws_high")})
  for name in runs[0]:
    np.testing.assert_array_equal(runs[0][name], runs[1][name])
  f0 = {}
  for name, samples in runs[0].items():
    audio = samples.astype(np.float32) / 32768.0
    track = librosa.yin(audio, fmin=50, fmax=400, sr=espeak.SAMPLE_RATE)
    f0[name] = float(np.median(track))
  assert f0["kws_low"] < 110 < 160 < f0["kws_high"], f0
  with pytest.raises(espeak.EspeakError, match="made variant must be one of"):
    espeak.synthesize("tôi", espeak.Voice("vi+other", variant=espeak.Variant(
        "kws_x", "male", (80, 120), ((100, 100, 100),))))


def test_random_voices_corpus_is_identical_for_any_cores(tmp_path):
  """The corpus job with --voices=random (its speakers: tests/test_robustness.py)."""
  _run(tmp_path / "one", "--voices=random", "--cores=1")
  _run(tmp_path / "two", "--voices=random", "--cores=2")
  assert _tree(tmp_path / "one") == _tree(tmp_path / "two")
