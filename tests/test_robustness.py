"""The robustness set: gettext sentences (data_prep/texts.py), held-out voices
(synthesize_corpus --voices), the set's windows and conditions (data_prep/robustness_set.py)
and its scoring (kws_tf/evaluation/robustness.py), against numpy / scipy / librosa /
gettext references."""
import gettext
import glob
import json
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import unicodedata
import zlib

import librosa
import numpy as np
import pytest
import scipy.signal
import soundfile

from conftest import REPO, run_module
from data_prep import corpora, espeak, robustness_set, texts
from kws_tf import audio, text
from kws_tf.evaluation import robustness

SR = robustness_set.SAMPLE_RATE


def power(x):
  return float(np.mean(np.square(np.asarray(x, np.float64))))


# ---------------------------------------------------------------------------
# data_prep/texts.py: sentences of gettext catalogues.

def write_mo(path, messages):
  """A GNU gettext catalogue (.mo) of ``messages`` (msgid -> msgstr), UTF-8, written by
  hand: magic 0x950412de, revision 0, N, the offsets of the msgid and msgstr tables
  (length, offset pairs), no hash table, then the NUL-terminated strings."""
  entries = {"": ("Content-Type: text/plain; charset=UTF-8\n"
                 "Plural-Forms: nplurals=1; plural=0;\n"), **messages}
  keys = sorted(entries)
  n = len(keys)
  originals_at, translations_at = 28, 28 + 8 * n
  data_at = 28 + 16 * n
  data, originals, translations = b"", [], []
  for table, strings in ((originals, keys), (translations, [entries[k] for k in keys])):
    for string in strings:
      encoded = string.encode("utf-8")
      table.append((len(encoded), data_at + len(data)))
      data += encoded + b"\0"
  header = struct.pack("<7I", 0x950412de, 0, n, originals_at, translations_at, 0, data_at)
  tables = b"".join(struct.pack("<2I", *pair) for pair in originals + translations)
  with open(path, "wb") as f:
    f.write(header + tables + data)


def test_mo_writer_reads_back_with_gettext(tmp_path):
  messages = {"Cannot open": "Không thể mở", "file\0files": "tệp tin", "Quit": "Thoát"}
  write_mo(tmp_path / "a.mo", messages)
  with open(tmp_path / "a.mo", "rb") as f:
    catalogue = gettext.GNUTranslations(f)
  assert catalogue.info()["content-type"] == "text/plain; charset=UTF-8"
  assert catalogue.info()["plural-forms"] == "nplurals=1; plural=0;"
  assert catalogue.gettext("Cannot open") == "Không thể mở"
  assert catalogue.gettext("Quit") == "Thoát"
  assert catalogue.ngettext("file", "files", 1) == "tệp tin"
  assert catalogue.ngettext("file", "files", 5) == "tệp tin"
  assert catalogue.gettext("Unknown") == "Unknown"


FIFTEEN = "tôi có một người bạn và những con mèo của không là ai cả đâu"
CATALOGUE_A = {
    # Two clauses at a comma and a full stop: both kept.
    "Cannot open this file, please try again.": "Không thể mở tệp tin này, vui lòng thử lại.",
    # An English word: dropped.
    "Downloading the Debian package": "Đang tải gói Debian về máy chủ",
    # Too few words per clause: dropped.
    "Done": "Đã xong",
    "Open file: success": "Mở tệp: thành công",
    # 15 words kept, 16 dropped.
    "fifteen": FIFTEEN.capitalize(),
    "sixteen": FIFTEEN + " nhé",
    # Digits split clauses and never reach a sentence.
    "Deleted 12 files": "Đã xoá 12 tệp",
    # Upper case, decomposed (NFD): lower case NFC.
    "ACCESS DENIED": unicodedata.normalize("NFD", "NGƯỜI DÙNG KHÔNG CÓ QUYỀN TRUY CẬP"),
    # A Vietnamese msgid: only the translation is read.
    "ba con mèo ăn cá nhỏ": "chương trình đang chạy rất chậm",
    # A plural entry.
    "one file was removed\0%d files were removed": "tệp tin này đã bị xoá rồi",
    # Parentheses and quotes split too.
    "Save (as a copy)": "Lưu lại (dưới dạng một bản sao) \"được không\"",
}
CATALOGUE_B = {
    "Please try again": "Vui lòng thử lại",        # again (after NFC / lower case): once
    "Server is slow": "Máy chủ đang chạy rất chậm",
}
EXPECTED_AB = {
    "không thể mở tệp tin này", "vui lòng thử lại", FIFTEEN,
    "người dùng không có quyền truy cập", "chương trình đang chạy rất chậm",
    "tệp tin này đã bị xoá rồi", "dưới dạng một bản sao", "máy chủ đang chạy rất chậm",
}


def test_sentences_filter_split_and_normalise(tmp_path):
  write_mo(tmp_path / "a.mo", CATALOGUE_A)
  write_mo(tmp_path / "b.mo", CATALOGUE_B)
  got = texts.sentences(locale_dir=str(tmp_path))
  assert got == sorted(EXPECTED_AB)
  for sentence in got:
    assert sentence == unicodedata.normalize("NFC", sentence).lower()
    assert not re.search(r"[0-9]", sentence)
    assert 4 <= len(sentence.split()) <= 15
    assert sentence.split(" ") == sentence.split()  # single spaces


def test_sentences_skip_unreadable_catalogue(tmp_path, capsys):
  write_mo(tmp_path / "a.mo", CATALOGUE_A)
  (tmp_path / "broken.mo").write_bytes(b"not a catalogue at all")
  (tmp_path / "cut.mo").write_bytes((tmp_path / "a.mo").read_bytes()[:12])
  assert texts.sentences(locale_dir=str(tmp_path)) == sorted(EXPECTED_AB - {
      "máy chủ đang chạy rất chậm"})
  out = capsys.readouterr().out
  assert "broken.mo" in out and "cut.mo" in out
  only_broken = tmp_path / "broken"
  only_broken.mkdir()
  (only_broken / "x.mo").write_bytes(b"\0" * 40)
  with pytest.raises(FileNotFoundError, match=re.escape(str(only_broken))):
    texts.sentences(locale_dir=str(only_broken))


def test_sentences_halves_split_by_crc32(tmp_path):
  syllables = ["tôi", "có", "một", "người", "bạn", "mèo", "nhà", "xanh", "đẹp", "lắm"]
  messages = {f"m{i}": " ".join(syllables[(i + k * 3) % len(syllables)] for k in range(5))
              for i in range(30)}
  write_mo(tmp_path / "x.mo", messages)
  everything = texts.sentences(locale_dir=str(tmp_path))
  assert len(everything) >= 8
  train = texts.sentences(locale_dir=str(tmp_path), half="train")
  test = texts.sentences(locale_dir=str(tmp_path), half="test")
  assert train and test
  assert not set(train) & set(test)
  assert sorted(train + test) == everything
  assert train == sorted(train) and test == sorted(test)
  assert all(zlib.crc32(s.encode("utf-8")) % 2 == 0 for s in train)
  assert all(zlib.crc32(s.encode("utf-8")) % 2 == 1 for s in test)


def test_sentences_errors(tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
    texts.sentences(locale_dir=str(empty))
  (empty / "a.mo.txt").write_text("not a catalogue")
  with pytest.raises(FileNotFoundError, match=re.escape(str(empty))):
    texts.sentences(locale_dir=str(empty), half="train")
  write_mo(tmp_path / "a.mo", CATALOGUE_A)
  with pytest.raises(ValueError, match="half"):
    texts.sentences(locale_dir=str(tmp_path), half="dev")


def test_sentences_drop_printf_conversions(tmp_path):
  write_mo(tmp_path / "a.mo", {
      "Wrote %i records with %i missing files":
          "Đã ghi %i bản ghi với %i tập tin còn thiếu",
      "%lu were downgraded": "%lu gói bị hạ cấp xuống"})
  got = texts.sentences(locale_dir=str(tmp_path))
  assert not [s for s in got if {"i", "lu"} & set(s.split())], got


# ---------------------------------------------------------------------------
# synthesize_corpus --voices. data_prep.synthesize_corpus and data_prep.robustness_set
# define the same absl flags (out_dir, seed, ...), so the former runs in a subprocess.

_SPEAKERS_SCRIPT = r"""
import dataclasses, json, sys
from data_prep import synthesize_corpus as sc
calls = json.loads(sys.argv[1])
out = {"sets": {k: [list(v[0]), [list(r) for r in v[1]], list(v[2])]
                for k, v in sc.VOICE_SETS.items()}, "calls": []}
for args, kwargs in calls:
  out["calls"].append([dataclasses.asdict(s) for s in sc.make_speakers(*args, **kwargs)])
print(json.dumps(out))
"""
_CALLS = [
    [[3, 4, 1], {}],
    [[3, 4, 1], {"voices": "demo"}],
    [[11, 40, 5], {}],
    [[11, 40, 5], {"voices": "demo"}],
    [[5, 60, 60], {"voices": "held_out"}],
    [[6, 60, 10], {"voices": "varied"}],
    [[7, 30, 30], {"voices": "held_out_variants"}],
    [[7, 30, 30], {"voices": "held_out_rates"}],
    [[0, 6, 2], {"voices": "random"}],
    [[0, 6, 2], {"voices": "random"}],
]


@pytest.fixture(scope="module")
def speakers():
  result = subprocess.run([sys.executable, "-c", _SPEAKERS_SCRIPT, json.dumps(_CALLS)],
                          cwd=REPO, capture_output=True, text=True, check=True)
  return json.loads(result.stdout.strip().splitlines()[-1])


def _voice(speaker):
  v = speaker["voice"]
  return (speaker["speaker_id"], speaker["split"], speaker["gender"], v["name"],
          v["rate_wpm"], v["pitch"], v["pitch_range"], v["volume"], list(speaker["seed"]))


# make_speakers(3, 4, 1) of the release before --voices (commit 5404712).
BEFORE_VOICES = [
    ("VSYN001", "train", "m", "vi-vn-x-south+klatt5", 160, 40, 29, 52, [3, 1, 0]),
    ("VSYN002", "train", "m", "vi-vn-x-central+m4", 183, 51, 72, 59, [3, 1, 1]),
    ("VSYN003", "train", "m", "vi-vn-x-central+m7", 146, 54, 57, 45, [3, 1, 2]),
    ("VSYN004", "test", "f", "vi-vn-x-central+f1", 154, 49, 62, 46, [3, 1, 3]),
]


def test_demo_voices_are_the_default_and_unchanged(speakers):
  default, demo, default40, demo40 = speakers["calls"][:4]
  assert [_voice(s) for s in default] == BEFORE_VOICES
  assert demo == default
  assert demo40 == default40
  for s in default40:
    assert s["voice"]["name"].split("+")[1] in espeak.VARIANTS
    assert 130 <= s["voice"]["rate_wpm"] <= 210


def test_held_out_voices(speakers):
  held_out = speakers["calls"][4]
  assert len(held_out) == 60 and all(s["split"] == "test" for s in held_out)
  variants = [s["voice"]["name"].split("+")[1] for s in held_out]
  assert set(variants) == set(espeak.HELD_OUT_VARIANTS)  # 60 draws cover all 15
  assert {s["voice"]["name"].split("+")[0] for s in held_out} <= set(espeak.VOICES)
  rates = [s["voice"]["rate_wpm"] for s in held_out]
  assert all(90 <= r <= 105 or 235 <= r <= 260 for r in rates), rates
  assert any(r <= 105 for r in rates) and any(r >= 235 for r in rates)
  assert all(20 <= s["voice"]["pitch"] <= 80 for s in held_out)
  # Voice/variant pairs without replacement: 60 speakers, 3 voices x 15 variants = 45.
  names = [s["voice"]["name"] for s in held_out]
  assert len(set(names[:45])) == 45


def test_voice_sets_are_disjoint(speakers):
  sets = speakers["sets"]
  held_out = set(espeak.HELD_OUT_VARIANTS)
  assert set(sets["held_out"][0]) == held_out
  assert not held_out & set(sets["demo"][0])
  assert not held_out & set(sets["varied"][0])
  assert not held_out & (set(espeak.VARIANTS) | set(espeak.MORE_VARIANTS))
  assert len(espeak.HELD_OUT_VARIANTS) == len(held_out)
  assert not set(espeak.VARIANTS) & set(espeak.MORE_VARIANTS)
  varied = speakers["calls"][5]
  assert {s["voice"]["name"].split("+")[1] for s in varied} <= set(sets["varied"][0])
  assert all(110 <= s["voice"]["rate_wpm"] <= 230 for s in varied)
  # The held-out rates do not overlap the rates of the training voice sets.
  train_rates = [r for k in ("demo", "varied") for r in sets[k][1]]
  for low, high in sets["held_out"][1]:
    assert all(high < a or low > b for a, b in train_rates)


# ---------------------------------------------------------------------------
# robustness_set signal primitives.

def test_mu_law_matches_librosa_within_one_step():
  # librosa 0.11: mu_compress(quantize=True) = digitize(sign(x) log1p(mu|x|) / log1p(mu),
  # linspace(-1, 1, 256), right=True) - 128 (a ceiling onto 2/255 bins, integers -128..127),
  # and mu_expand(quantize=True) reads those integers as y = q / 128 before
  # sign(y) ((1 + mu)^|y| - 1) / mu. robustness_set.mu_law rounds onto the 256 levels
  # -1 + 2 j / 255 instead. Both quantisers are monotone with the same 2/255 bins, so
  # in the compressed domain their outputs differ by at most 255 / 32640 = 1/128, less
  # than one step 2/255: the tolerance is one step (2/255) in the compressed domain.
  rng = np.random.default_rng(0)
  x = np.concatenate([np.linspace(-1, 1, 20001), rng.uniform(-1, 1, 20000),
                      rng.normal(0, 0.01, 20000).clip(-1, 1)])
  ours = robustness_set.mu_law(x)
  reference = librosa.mu_expand(librosa.mu_compress(x, mu=255, quantize=True),
                                mu=255, quantize=True)
  step = 2 / 255
  ours_c = librosa.mu_compress(np.clip(ours, -1, 1), mu=255, quantize=False)
  reference_c = librosa.mu_compress(reference, mu=255, quantize=False)
  assert np.max(np.abs(ours_c - reference_c)) <= step + 1e-9
  # The round-trip itself: at most half a step from the input (rounding), 256 levels.
  x_c = librosa.mu_compress(x, mu=255, quantize=False)
  assert np.max(np.abs(ours_c - x_c)) <= step / 2 + 1e-9
  assert len(np.unique(np.round(ours, 12))) <= 256
  assert np.all(np.sign(ours[x != 0]) == np.sign(x[x != 0]))


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 5.0, 17.5, 25.0])
def test_mix_gives_requested_snr(snr_db):
  rng = np.random.default_rng(1)
  signal = rng.normal(0, 0.2, 16000)
  noise = rng.normal(0, 3.0, 16000) + 0.5
  reference = 0.01  # a speech power other than the window's
  mixed = robustness_set.mix(signal, noise, snr_db, reference)
  added = mixed - signal
  np.testing.assert_allclose(10 * np.log10(reference / power(added)), snr_db, atol=1e-9)
  np.testing.assert_allclose(added / noise, added[0] / noise[0], rtol=1e-9)  # just scaled


def _draw(condition, window, reference=0.01, pool=None, tries=400):
  """apply_condition with the first seed whose rng draws ``condition``."""
  pool = pool or [np.random.default_rng(99).normal(0, 0.1, 3 * SR)]
  for seed in range(tries):
    out, info = robustness_set.apply_condition(np.random.default_rng(seed), window,
                                               reference, pool)
    if info["condition"] == condition:
      return out, info
  raise AssertionError(f"no seed below {tries} draws {condition}")


def test_telephone_removes_the_band_above_4khz():
  rng = np.random.default_rng(2)
  window = rng.normal(0, 0.1, SR)  # white: as much energy above 4 kHz as below
  out, info = _draw("telephone", window)
  assert info == {"condition": "telephone", "noise": None, "snr_db": None, "rt60": None}
  assert out.shape == window.shape
  hertz, psd_in = scipy.signal.welch(window, SR, nperseg=1024)
  _, psd_out = scipy.signal.welch(out, SR, nperseg=1024)
  above, below = hertz > 4200, hertz < 3800
  assert psd_in[above].sum() / psd_in[below].sum() > 0.8
  assert psd_out[above].sum() / psd_out[below].sum() < 1e-3
  # The pass band survives the 8-bit mu-law channel (about 38 dB SNR): within 1 dB.
  band = (hertz > 300) & (hertz < 3400)
  assert abs(10 * np.log10(psd_out[band].sum() / psd_in[band].sum())) < 1.0
  # The same chain by hand: soxr to 8 kHz, mu-law, soxr back.
  import soxr
  narrow = robustness_set.mu_law(np.clip(soxr.resample(window, SR, 8000, quality="HQ"), -1, 1))
  np.testing.assert_allclose(out, np.clip(soxr.resample(narrow, 8000, SR, quality="HQ"), -1, 1),
                             atol=1e-12)


def test_gain_condition_scales_and_clips():
  window = np.random.default_rng(3).normal(0, 0.2, SR)
  out, info = _draw("gain", window)
  assert info["gain_db"] in robustness_set.GAINS_DB
  np.testing.assert_allclose(out, np.clip(window * 10 ** (info["gain_db"] / 20), -1, 1),
                             rtol=1e-12)


def test_conditions_are_described_consistently():
  window = np.random.default_rng(4).normal(0, 0.1, SR)
  seen = {}
  for seed in range(300):
    out, info = robustness_set.apply_condition(np.random.default_rng(seed), window, 0.01,
                                               [np.random.default_rng(5).normal(0, 0.1, 2 * SR)])
    assert out.shape == window.shape and np.all(np.abs(out) <= 1) and np.all(np.isfinite(out))
    condition = info["condition"]
    seen[condition] = seen.get(condition, 0) + 1
    noisy = condition in ("noise", "reverb_noise")
    assert (info["noise"] in robustness_set.NOISES) == noisy
    assert (info["snr_db"] in robustness_set.SNR_BINS_DB) == noisy
    reverb = condition in ("reverb", "reverb_noise")
    assert (info["rt60"] is not None) == reverb
    if reverb:
      assert robustness_set.RT60_SECONDS[0] <= info["rt60"] <= robustness_set.RT60_SECONDS[1]
    if condition == "clean":
      np.testing.assert_array_equal(out, window)
  assert set(seen) == set(robustness_set.CONDITIONS)
  for condition, weight in zip(robustness_set.CONDITIONS, robustness_set.CONDITION_WEIGHTS):
    assert abs(seen[condition] / 300 - weight) < 0.08, seen


@pytest.mark.parametrize("rt60", [0.3, 0.6, 1.0])
def test_room_impulse_response_decays_60_db_in_rt60(rt60):
  for seed in range(3):
    rir = robustness_set.room_impulse_response(np.random.default_rng(seed), rt60)
    assert rir[0] == 1.0
    assert len(rir) == int(rt60 * SR)
    frame = int(0.01 * SR)
    energy = np.array([power(rir[i:i + frame]) for i in range(0, len(rir) - frame + 1, frame)])
    t = (np.arange(len(energy)) + 0.5) * 0.01
    quarter = len(energy) // 4
    assert energy[-quarter:].sum() < 1e-3 * energy[1:quarter].sum()  # late tail quieter
    # Slope of the diffuse tail (after the early reflections, up to 80% of rt60): -60 dB/rt60.
    fit = (t > 0.06) & (t < 0.8 * rt60)
    slope = np.polyfit(t[fit], 10 * np.log10(energy[fit]), 1)[0]
    assert -60 / rt60 * 1.2 < slope < -60 / rt60 * 0.8, (seed, slope)


def test_hum_is_mains_harmonics():
  for seed in range(4):
    x = robustness_set.hum(np.random.default_rng(seed), SR)
    spectrum = np.abs(np.fft.rfft(x)) ** 2  # 1 Hz bins
    base = 50 if spectrum[50] > spectrum[60] else 60
    harmonics = spectrum[base:12 * base:base]
    assert harmonics.sum() / spectrum.sum() > 0.99
    assert np.count_nonzero(harmonics > 1e-3 * harmonics.max()) >= 5


def test_fan_noise_is_coloured_below_4khz():
  for seed in range(4):
    x = robustness_set.fan(np.random.default_rng(seed), SR)
    assert x.shape == (SR,) and np.all(np.isfinite(x))
    hertz, psd = scipy.signal.welch(x, SR, nperseg=512)
    assert 50 <= hertz[np.argmax(psd)] <= 4500
    assert psd[hertz > 7000].mean() < 0.1 * psd.max()


# ---------------------------------------------------------------------------
# plan_windows on hand-made utterances.

def _utt(utt_id):
  return corpora.Utterance(id=utt_id, audio_path=f"/nowhere/{utt_id}.wav", text="x",
                           speaker=utt_id.split("_")[0], split="test")


W = corpora.Word
PLAN_UTTERANCES = [_utt("SPKA_R001"), _utt("SPKB_R001"), _utt("SPKC_R001"), _utt("SPKD_R001")]
PLAN_ALIGNMENTS = {
    "SPKA_R001": [W(0.0, 0.4, "xin"), W(0.4, 0.7, "Có"), W(0.7, 2.0, "chào"),
                  W(2.0, 4.0, "bạn"), W(4.0, 4.3, "là"), W(4.3, 9.0, "gì"),
                  W(9.0, 9.25, "tôi,")],
    # A 0.9 s keyword: its offset window may move by 0.05 s only.
    "SPKB_R001": [W(0.0, 2.0, "hôm"), W(2.0, 2.5, "không"), W(2.5, 3.0, "nay"),
                  W(3.0, 3.9, "những"), W(3.9, 6.0, "ngày")],
    # SPKC_R001: no alignment. SPKD_R001: no keyword.
    "SPKD_R001": [W(0.0, 3.0, "trời"), W(3.0, 5.0, "mưa")],
}


def _plan(seed, utterances=PLAN_UTTERANCES, alignments=PLAN_ALIGNMENTS, max_offset=0.3):
  return robustness_set.plan_windows(np.random.default_rng(seed), utterances, alignments,
                                     text.KEYWORDS, 1.0, max_offset)


def _overlaps(start, words, clip=1.0):
  return [w for w in words if text.normalize(w.word) in text.KEYWORDS
          and start < w.end and w.start < start + clip]


def test_plan_windows_placements():
  for seed in range(5):
    plan = _plan(seed)
    ids = [w["id"] for w in plan]
    assert len(set(ids)) == len(ids) and ids == sorted(ids)
    keyword_words = [(utt, i, w) for utt, words in PLAN_ALIGNMENTS.items()
                     for i, w in enumerate(words) if text.normalize(w.word) in text.KEYWORDS]
    assert len(keyword_words) == 5
    positives = [w for w in plan if w["placement"] != "negative"]
    assert len(positives) == 2 * len(keyword_words)
    for utt, index, word in keyword_words:
      mine = [w for w in positives if w["utt"].id == utt and w["id"].startswith(
          f"{utt}-p{index:03d}-")]
      assert sorted(w["placement"] for w in mine) == ["centred", "offset"]
      centre = (word.start + word.end) / 2
      for window in mine:
        assert window["label"] == text.normalize(word.word)
        moved = window["start"] + 0.5 - centre
        if window["placement"] == "centred":
          assert abs(moved) < 1e-12 and window["offset_seconds"] == 0.0
        else:
          assert abs(moved) <= 0.3 + 1e-12
          assert abs(moved - window["offset_seconds"]) <= 0.0005 + 1e-12
          assert window["start"] <= word.start + 1e-12
          assert word.end <= window["start"] + 1.0 + 1e-12
    long_word = [w for w in positives if w["id"] == "SPKB_R001-p003-o"][0]
    assert abs(long_word["offset_seconds"]) <= 0.05 + 1e-9
    negatives = [w for w in plan if w["placement"] == "negative"]
    assert len(negatives) == len(positives)
    for window in negatives:
      assert window["label"] == text.NEGATIVE_LABEL and window["offset_seconds"] == 0.0
      words = PLAN_ALIGNMENTS[window["utt"].id]
      assert not _overlaps(window["start"], words)
      assert 0 <= window["start"] and window["start"] + 1.0 <= max(w.end for w in words) + 1e-9
      assert window["id"] == f"{window['utt'].id}-n{round(window['start'] * 1000):06d}"
    assert not [w for w in plan if w["utt"].id == "SPKC_R001"]
  # Offsets are drawn, not fixed, and use the +-0.3 s range.
  offsets = [w["offset_seconds"] for s in range(5) for w in _plan(s)
             if w["placement"] == "offset"]
  assert len(set(offsets)) > 10 and min(offsets) < -0.1 and max(offsets) > 0.1


def test_plan_windows_same_seed_same_plan():
  def key(plan):
    return [(w["id"], w["utt"].id, w["label"], w["placement"], w["offset_seconds"], w["start"])
            for w in plan]
  assert key(_plan(7)) == key(_plan(7))
  assert key(_plan(7)) != key(_plan(8))


def test_plan_windows_few_gaps_takes_all():
  # Keywords fill 0-0.45 s of a 1.5 s utterance: keyword-free 1 s windows start at
  # 0.45 or 0.5 only, fewer than the 4 keyword windows.
  alignments = {"SPKA_R001": [W(0.0, 0.3, "có"), W(0.3, 0.45, "là"), W(0.45, 1.5, "xin")]}
  plan = _plan(0, [_utt("SPKA_R001")], alignments)
  assert sum(w["placement"] != "negative" for w in plan) == 4
  assert sorted(w["start"] for w in plan if w["placement"] == "negative") == [0.45, 0.5]


def test_plan_windows_gap_grid_reaches_the_last_word():
  alignments = {"SPKA_R001": [W(0.0, 0.15, "có"), W(0.15, 1.2, "xin")]}
  plan = _plan(0, [_utt("SPKA_R001")], alignments)
  assert sorted(w["start"] for w in plan if w["placement"] == "negative") == [0.15, 0.2]


# ---------------------------------------------------------------------------
# kws_tf.evaluation.robustness.

def _row(label, placement, condition, noise=None, snr_db=None, gain_db=None):
  row = {"label": label, "placement": placement, "condition": condition, "noise": noise,
         "snr_db": snr_db, "rt60": None}
  if gain_db is not None:
    row["gain_db"] = gain_db
  return row


SCORE_ROWS = [
    _row("có", "centred", "clean"),
    _row("có", "offset", "noise", "hum", 10),
    _row("là", "centred", "noise", "babble", 10),
    _row("là", "offset", "telephone"),
    _row("negative", "negative", "clean"),
    _row("negative", "negative", "noise", "fan", 5),
    _row("negative", "negative", "reverb"),
    _row("tôi", "centred", "gain", gain_db=-24.0),
    _row("negative", "negative", "gain", gain_db=12.0),
]
SCORE_PREDICTED = ["có", "có", "có", "là", "negative", "tôi", "negative", "negative", "và"]
NAN = float("nan")
# group: (windows, accuracy, keyword_recall, false_accepts), counted by hand.
SCORE_EXPECTED = {
    "all": (9, 5 / 9, 3 / 5, 2 / 4),
    "clean": (2, 1.0, 1.0, 0.0),
    "centred": (7, 3 / 7, 1 / 3, 2 / 4),
    "offset": (6, 4 / 6, 1.0, 2 / 4),
    "condition=clean": (2, 1.0, 1.0, 0.0),
    "condition=noise": (3, 1 / 3, 1 / 2, 1.0),
    "condition=reverb": (1, 1.0, NAN, 0.0),
    "condition=telephone": (1, 1.0, 1.0, NAN),
    "noise=babble": (1, 0.0, 0.0, NAN),
    "noise=fan": (1, 0.0, NAN, 1.0),
    "noise=hum": (1, 1.0, 1.0, NAN),
    "snr=5": (1, 0.0, NAN, 1.0),
    "snr=10": (2, 0.5, 0.5, NAN),
    "condition=gain": (2, 0.0, 0.0, 1.0),
    "gain=-24": (1, 0.0, 0.0, NAN),
    "gain=12": (1, 0.0, NAN, 1.0),
}


def test_score_groups_by_hand():
  got = robustness.score(SCORE_ROWS, SCORE_PREDICTED)
  assert set(got) == set(SCORE_EXPECTED)
  for name, (windows, accuracy, recall, false_accepts) in SCORE_EXPECTED.items():
    metrics = got[name]
    assert metrics["windows"] == windows, name
    for key, value in (("accuracy", accuracy), ("keyword_recall", recall),
                       ("false_accepts", false_accepts)):
      if math.isnan(value):
        assert math.isnan(metrics[key]), (name, key)
      else:
        assert metrics[key] == pytest.approx(value, abs=1e-12), (name, key)
  with pytest.raises(ValueError):
    robustness.score(SCORE_ROWS, SCORE_PREDICTED[:-1])


def test_probabilities_follow_the_sets_class_order():
  classes = text.keyword_classes()
  model_classes = list(reversed(classes))
  windows = np.zeros((len(classes), 100), np.float32)
  for i in range(len(classes)):
    windows[i, 0] = i  # the fake model's argmax: output i
  calls = []

  def model(window):
    calls.append(window.shape)
    probabilities = np.full((1, len(model_classes)), 0.01, np.float32)
    probabilities[0, int(window[0])] = 0.9
    return {"probabilities": probabilities}

  got = robustness.probabilities(model, windows, classes, model_classes)
  assert got.shape == (len(classes), len(classes))
  for i in range(len(classes)):  # output i of the model is column classes.index(model_classes[i])
    assert got[i, classes.index(model_classes[i])] == pytest.approx(0.9)
  assert robustness.predict(got, classes) == model_classes
  assert calls == [(100,)] * len(classes)
  with pytest.raises(ValueError, match="xin"):
    robustness.probabilities(model, windows, classes, ["có", "xin", "negative"])


def test_recall_at_5pct_fa_by_hand():
  """20 negatives whose highest keyword scores are 0.1 (x18), 0.6 and 0.9: at most one
  may fire, so the threshold is 0.65, the lowest score above 0.6. Of five keyword windows
  (true-keyword scores 0.95, 0.7, 0.65, 0.3, and one beaten by another keyword at 0.99)
  three fire their own keyword: recall 3/5 at one false accept, where the argmax fires on two."""
  classes = text.keyword_classes()
  negative = classes.index(text.NEGATIVE_LABEL)
  rows, scores = [], []

  def window(label, keyword_scores):
    row = np.zeros(len(classes), np.float32)
    for name, value in keyword_scores.items():
      row[classes.index(name)] = value
    row[negative] = 1.0 - row.sum()
    rows.append(_row(label, "negative" if label == text.NEGATIVE_LABEL else "centred", "clean"))
    scores.append(row)

  for value in [0.1] * 18 + [0.6, 0.9]:
    window(text.NEGATIVE_LABEL, {"tôi": value})
  for value in (0.95, 0.7, 0.65, 0.3):
    window("có", {"có": value})
  window("là", {"là": 0.005, "một": 0.99})
  scores = np.stack(scores)
  got = robustness.score(rows, robustness.predict(scores, classes), scores)["all"]
  assert got["recall_at_5pct_fa"] == pytest.approx(3 / 5)
  assert got["false_accepts"] == pytest.approx(2 / 20)  # argmax fires on 0.6 and 0.9
  assert got["keyword_recall"] == pytest.approx(3 / 5)  # 0.3 loses to negative's 0.7
  # Without scores there is no detection metric; a group without negatives has none.
  assert "recall_at_5pct_fa" not in robustness.score(rows, robustness.predict(scores, classes))["all"]
  keywords_only = robustness.score(rows[20:], robustness.predict(scores[20:], classes), scores[20:])
  assert math.isnan(keywords_only["all"]["recall_at_5pct_fa"])


def test_read_manifest(tmp_path):
  with pytest.raises(FileNotFoundError, match="manifest.jsonl"):
    robustness.read_manifest(str(tmp_path / "missing"))
  rows = [{"id": "a", "path": "clips/a.wav", "label": "có", "placement": "centred",
           "condition": "clean"},
          {"id": "b", "path": "clips/b.wav", "label": "negative", "placement": "negative",
           "condition": "noise"}]
  manifest = tmp_path / "manifest.jsonl"
  manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                      encoding="utf-8")
  got = robustness.read_manifest(str(tmp_path))
  assert [r["path"] for r in got] == [str(tmp_path / "clips/a.wav"), str(tmp_path / "clips/b.wav")]
  assert [r["label"] for r in got] == ["có", "negative"]
  manifest.write_text(json.dumps(rows[0]) + "\n{not json\n", encoding="utf-8")
  with pytest.raises(ValueError, match=re.escape(f"{manifest}:2")):
    robustness.read_manifest(str(tmp_path))


def test_read_manifest_row_without_path_names_the_line(tmp_path):
  first = {"id": "a", "path": "a.wav", "label": "có", "placement": "centred",
           "condition": "clean"}
  (tmp_path / "manifest.jsonl").write_text(json.dumps(first) + '\n{"id": "b"}\n',
                                           encoding="utf-8")
  with pytest.raises(ValueError, match="manifest.jsonl:2"):
    robustness.read_manifest(str(tmp_path))


# ---------------------------------------------------------------------------
# End to end: data_prep.robustness_set on the synthetic corpus.

def _make_set(out, corpus):
  return run_module("data_prep.robustness_set", f"--out_dir={out}", f"--corpus_dir={corpus}",
                    "--seed=2")


def _files(root):
  return sorted(os.path.relpath(p, root) for p in glob.glob(os.path.join(root, "**", "*"),
                                                            recursive=True)
                if os.path.isfile(p))


@pytest.fixture(scope="module")
def robustness_sets(synthetic_corpus, tmp_path_factory):
  root = tmp_path_factory.mktemp("robustness")
  first = _make_set(root / "a", synthetic_corpus)
  return root / "a", root / "b", first


_ID = re.compile(r"^(?P<utt>.+)-(?:p(?P<index>\d{3})-[co]|n(?P<ms>\d{6}))$")


def test_set_from_corpus(robustness_sets, synthetic_corpus):
  out, _, first = robustness_sets
  assert "synthetic speech" in first.stdout
  rows = robustness.read_manifest(str(out))
  assert rows
  utterances = {u.id: u for u in corpora.read_corpus("vivos", str(synthetic_corpus), ["test"])}
  assert _files(out) == sorted(
      ["manifest.jsonl", "settings.json", "utterances.jsonl", "utterances/test/prompts.txt"]
      + [os.path.join("clips", r["id"] + ".wav") for r in rows]
      + [os.path.join("utterances", "test", "waves", i.split("_")[0], i + ".wav")
         for i in utterances])
  alignments = corpora.read_ctm([os.path.join(synthetic_corpus, "test", "alignments.ctm")])
  placements = [r["placement"] for r in rows]
  keyword_windows = placements.count("centred") + placements.count("offset")
  assert placements.count("centred") == placements.count("offset") > 0
  assert placements.count("negative") == keyword_windows
  checked = 0
  for row in rows:
    info = soundfile.info(row["path"])
    assert (info.samplerate, info.channels, info.frames, info.subtype, info.format) == (
        16000, 1, 16000, "PCM_16", "WAV")
    assert row["condition"] in robustness_set.CONDITIONS
    assert row["snr_db"] is None or row["snr_db"] in robustness_set.SNR_BINS_DB
    assert row["noise"] is None or row["noise"] in robustness_set.NOISES
    match = _ID.match(row["id"])
    words = alignments[match["utt"]]
    if match["index"] is not None:
      word = words[int(match["index"])]
      assert row["label"] == text.normalize(word.word) in text.KEYWORDS
      start = (word.start + word.end) / 2 + row["offset_seconds"] - 0.5
    else:
      assert row["label"] == text.NEGATIVE_LABEL
      start = int(match["ms"]) / 1000
      assert not _overlaps(start, words)
    if row["condition"] != "clean":
      continue
    # A clean window is the utterance from its start: best match within +-0.5 ms
    # (offset_seconds is rounded to 1 ms), within 1 LSB (x / 32768 written as x * 32767).
    speech = audio.read_audio(utterances[match["utt"]].audio_path, SR).astype(np.float64)
    clip, _ = soundfile.read(row["path"], dtype="int16")
    errors = [np.max(np.abs(np.round(audio.cut_clip(speech, start + lag / SR, SR, SR) * 32767)
                            - clip)) for lag in range(-8, 9)]
    assert min(errors) <= 1, (row["id"], errors)
    if row["placement"] != "offset":
      assert errors[8] <= 1, row["id"]
    checked += 1
  assert checked > 0
  windows = robustness.load_windows(rows, SR)
  assert windows.shape == (len(rows), SR) and windows.dtype == np.float32


def test_utterances_are_the_test_split_under_conditions(robustness_sets, synthetic_corpus):
  """The utterance corpus reads as VIVOS with the original transcripts; clean ones are
  the original audio (within 1 LSB); the others carry their condition."""
  out, _, _ = robustness_sets
  original = {u.id: u for u in corpora.read_corpus("vivos", str(synthetic_corpus), ["test"])}
  made = {u.id: u for u in corpora.read_corpus("vivos", str(out / "utterances"), ["test"])}
  assert set(made) == set(original)
  rows = [json.loads(line) for line in (out / "utterances.jsonl").read_text().splitlines()]
  assert sorted(r["id"] for r in rows) == sorted(original)
  for row in rows:
    assert row["condition"] in robustness_set.CONDITIONS
    assert made[row["id"]].text == original[row["id"]].text
    speech = audio.read_audio(original[row["id"]].audio_path, SR).astype(np.float64)
    clip, _ = soundfile.read(made[row["id"]].audio_path, dtype="int16")
    assert len(clip) == len(speech)
    difference = np.max(np.abs(np.round(speech * 32767) - clip))
    if row["condition"] == "clean":
      assert difference <= 1, row
    else:
      assert difference > 1, row


def test_set_second_run_and_fresh_copy(robustness_sets, synthetic_corpus):
  out, fresh, _ = robustness_sets
  stamps = {f: os.stat(out / f).st_mtime_ns for f in _files(out)}
  again = _make_set(out, synthetic_corpus)
  assert "robustness set complete" in again.stdout
  assert {f: os.stat(out / f).st_mtime_ns for f in _files(out)} == stamps
  _make_set(fresh, synthetic_corpus)
  assert _files(fresh) == _files(out)
  for name in _files(out):
    assert (out / name).read_bytes() == (fresh / name).read_bytes(), name
  # A set made before the utterances existed gains them; its windows stay as they are.
  os.remove(fresh / "utterances.jsonl")
  shutil.rmtree(fresh / "utterances")
  windows = {f: os.stat(fresh / f).st_mtime_ns for f in _files(fresh)}
  _make_set(fresh, synthetic_corpus)
  assert {f: os.stat(fresh / f).st_mtime_ns for f in windows} == windows
  for name in _files(out):
    assert (out / name).read_bytes() == (fresh / name).read_bytes(), name


def test_apply_condition_applies_the_condition_asked_for():
  window = np.random.default_rng(6).normal(0, 0.1, SR)
  pool = [np.random.default_rng(7).normal(0, 0.1, 2 * SR)]
  for condition in robustness_set.CONDITIONS:
    out, info = robustness_set.apply_condition(np.random.default_rng(0), window, 0.01, pool,
                                               condition)
    assert info["condition"] == condition and out.shape == window.shape
  with pytest.raises(ValueError, match="unknown condition 'fog'"):
    robustness_set.apply_condition(np.random.default_rng(0), window, 0.01, pool, "fog")


def test_factor_voice_sets_hold_one_thing_out_each(speakers):
  """held_out_variants: the held-out variants at the training rates; held_out_rates:
  the training variants at the held-out rates (robustness sets per factor)."""
  variants, rates = speakers["calls"][6], speakers["calls"][7]
  training = set(espeak.VARIANTS) | set(espeak.MORE_VARIANTS)
  assert {s["voice"]["name"].split("+")[1] for s in variants} <= set(espeak.HELD_OUT_VARIANTS)
  assert all(110 <= s["voice"]["rate_wpm"] <= 230 for s in variants)
  assert {s["voice"]["name"].split("+")[1] for s in rates} <= training
  assert all(90 <= s["voice"]["rate_wpm"] <= 105 or 235 <= s["voice"]["rate_wpm"] <= 260
             for s in rates)


def test_random_voices_give_every_speaker_its_own_variant(speakers):
  random, again = speakers["calls"][8], speakers["calls"][9]
  assert random == again
  variants = [s["voice"]["variant"] for s in random]
  settings = [{k: v for k, v in variant.items() if k != "name"} for variant in variants]
  assert all(a != b for i, a in enumerate(settings) for b in settings[i + 1:])
  for speaker, variant in zip(random, variants):
    assert speaker["voice"]["name"].split("+")[1] == variant["name"]
    assert speaker["voice"]["name"].split("+")[0] in espeak.VOICES
    assert speaker["gender"] == variant["gender"][0]
    assert 110 <= speaker["voice"]["rate_wpm"] <= 230
    assert len(variant["formants"]) == 6
  assert [s["split"] for s in random] == ["train"] * 4 + ["test"] * 2
