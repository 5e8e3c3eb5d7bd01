"""The project's own Vietnamese lexicon, sentence templates and sentence generator.

Sentences come from a small grammar written for this project: a template from
``TEMPLATES`` is expanded by replacing every ``{SLOT}`` with one alternative of
``RULES[SLOT]``, chosen uniformly, recursively, until only words remain. Word
lists are grouped by part of speech and meaning (food goes with "ăn", places
with "đi"), so the sentences are plausible if not always sensible.

Everything is NFC and lower case; a "word" is one space-separated syllable, as
in VIVOS transcripts ("thành phố" is two words). The keywords of
``kws_tf.text.KEYWORDS`` (có, là, không, một, của, và, người, những, tôi) are
built into the templates and rules at about the rates of real Vietnamese text:
together some 10-20 % of the words, each in many sentences but not in most.
"""
import collections
import re
from typing import Dict, Iterable, List, Tuple

import numpy as np

MIN_WORDS = 4
MAX_WORDS = 15

# Pronouns other than "tôi", which the rules use on their own.
PRONOUNS = (
    "bạn", "anh", "chị", "em", "ông", "bà", "cô", "chú", "họ", "nó",
    "chúng tôi", "chúng ta", "các bạn", "mình", "anh ấy", "chị ấy", "cô ấy",
    "ông ấy", "bà ấy", "em ấy",
)
PERSONAL_NAMES = (
    "lan", "hoa", "minh", "nam", "hùng", "mai", "tuấn", "linh", "dũng",
    "hương", "thảo", "long", "trang", "quang", "hà", "phương", "bình", "sơn",
)
TITLES = ("anh", "chị", "cô", "chú", "ông", "bà", "bé", "bạn")
FAMILY = (
    "mẹ", "bố", "anh trai", "chị gái", "em trai", "em gái", "ông nội",
    "bà nội", "ông ngoại", "bà ngoại", "con trai", "con gái", "vợ", "chồng",
    "cô giáo", "thầy giáo", "hàng xóm", "đồng nghiệp",
)
PROFESSIONS = (
    "bác sĩ", "giáo viên", "kỹ sư", "nông dân", "công nhân", "nhà báo",
    "ca sĩ", "cảnh sát", "y tá", "sinh viên", "học sinh", "nhân viên",
    "giám đốc", "đầu bếp", "tài xế", "luật sư", "nhạc sĩ", "thợ may",
)
# Classifier + noun: countable things and animals.
THINGS = (
    "quyển sách", "cái bàn", "cái ghế", "chiếc xe", "chiếc áo", "cái điện thoại",
    "cái máy tính", "con mèo", "con chó", "con gà", "con cá", "ngôi nhà",
    "bức tranh", "tờ báo", "lá thư", "cây bút", "đôi giày", "cái mũ",
    "chiếc xe đạp", "bông hoa", "cái túi", "căn phòng", "bài hát", "cái đồng hồ",
    "chiếc thuyền", "cái tủ lạnh", "cây đàn", "tấm ảnh", "con búp bê",
    "quả bóng", "cái ô", "chiếc váy",
)
FOODS = (
    "cơm", "phở", "bánh mì", "bún chả", "cá kho", "thịt gà", "thịt bò", "rau",
    "trái cây", "trứng", "canh chua", "xôi", "bánh cuốn", "gỏi cuốn", "cháo",
    "bún bò", "chả giò", "bánh xèo", "cơm tấm",
)
DRINKS = (
    "nước", "trà", "cà phê", "sữa", "nước cam", "bia", "nước mía", "sinh tố",
    "trà đá", "nước dừa",
)
CITIES = (
    "hà nội", "sài gòn", "huế", "đà nẵng", "hải phòng", "cần thơ", "nha trang",
    "đà lạt", "vũng tàu", "hạ long", "sa pa", "hội an", "vinh", "quy nhơn",
    "buôn ma thuột", "thái bình", "nam định", "phú quốc",
)
COUNTRIES = (
    "việt nam", "nhật bản", "hàn quốc", "pháp", "mỹ", "thái lan", "lào",
    "trung quốc", "nước anh", "nước đức", "úc", "nga",
)
VENUES = (
    "trường", "chợ", "công viên", "bệnh viện", "nhà ga", "thư viện",
    "siêu thị", "văn phòng", "nhà hàng", "bãi biển", "sân bay", "quê",
    "công ty", "bưu điện", "quán cà phê", "nhà sách", "sân vận động",
    "lớp học", "chùa", "bảo tàng", "rạp chiếu phim", "nhà máy", "cánh đồng",
)
TOPICS = (
    "tiếng việt", "tiếng anh", "toán", "lịch sử", "âm nhạc", "kinh tế",
    "văn học", "khoa học", "địa lý", "hóa học", "vật lý", "y học", "tiếng pháp",
)
ABSTRACT_NOUNS = (
    "công việc", "cuộc sống", "thời gian", "gia đình", "sức khỏe", "tương lai",
    "kế hoạch", "vấn đề", "ý kiến", "câu chuyện", "kỳ nghỉ", "bài học",
    "tin tức", "thời tiết", "giấc mơ", "kỷ niệm", "tình bạn", "quê hương",
)
ACTIVITIES = (
    "ngủ", "làm việc", "học bài", "nấu ăn", "nghỉ ngơi", "đi bộ", "chạy bộ",
    "bơi", "hát", "nhảy", "tập thể dục", "đi chợ", "dọn nhà", "đi học",
    "đi làm", "về nhà", "xem phim", "nghe nhạc", "đọc báo", "chơi bóng đá",
    "lái xe", "gọi điện", "đi du lịch", "chơi cờ", "câu cá", "trồng rau",
    "viết thư", "chụp ảnh", "đi ngủ sớm",
)
THING_VERBS = (
    "mua", "bán", "thấy", "tìm", "mượn", "lấy", "mang", "giữ", "sửa", "vẽ",
    "rửa", "làm mất", "tặng", "chọn", "cất",
)
PERSON_VERBS = (
    "gặp", "giúp", "gọi", "đợi", "thăm", "yêu", "nhớ", "hỏi", "dạy", "tin",
    "đón", "chào", "mời", "cảm ơn", "hiểu",
)
FOOD_VERBS = ("ăn", "nấu", "mua", "gọi", "làm", "đặt", "thử")
MOTION_VERBS = ("đi", "đến", "về", "ghé", "quay lại", "chuyển đến", "đi thăm")
COGNITION_VERBS = (
    "nghĩ", "biết", "nói", "thấy", "hy vọng", "tin", "nghe nói", "cho rằng",
    "hiểu", "nhớ",
)
ASPECTS = (
    "đã", "đang", "sẽ", "vừa", "sắp", "vẫn", "cũng", "thường", "hay", "luôn",
    "chưa bao giờ", "vẫn còn", "mới",
)
DEGREES = ("rất", "khá", "hơi", "quá", "thật", "cực kỳ")
PERSON_ADJECTIVES = (
    "vui", "buồn", "mệt", "khỏe", "bận", "giỏi", "chăm chỉ", "thông minh",
    "trẻ", "đẹp", "cao", "hiền", "vui vẻ", "tốt bụng", "lười", "đói", "ốm",
    "hạnh phúc", "lo lắng", "nổi tiếng", "giàu", "nghèo",
)
THING_ADJECTIVES = (
    "đẹp", "mới", "cũ", "lớn", "nhỏ", "rẻ", "đắt", "tốt", "xấu", "sạch",
    "bẩn", "nặng", "nhẹ", "dài", "ngắn", "xanh", "đỏ", "trắng", "đen", "vàng",
    "hiện đại", "quý",
)
FOOD_ADJECTIVES = (
    "ngon", "nóng", "lạnh", "ngọt", "cay", "mặn", "chua", "rẻ", "thơm", "đắt",
)
PLACE_ADJECTIVES = (
    "đông", "vắng", "xa", "gần", "yên tĩnh", "ồn ào", "sạch sẽ", "rộng", "đẹp",
    "nổi tiếng", "cổ kính", "náo nhiệt",
)
WEATHER = (
    "nắng", "mưa", "lạnh", "nóng", "mát", "đẹp", "âm u", "nhiều mây", "oi bức",
    "rét", "ấm",
)
NUMBERS = (
    "hai", "ba", "bốn", "năm", "sáu", "bảy", "tám", "chín", "mười", "mười hai",
    "hai mươi", "ba mươi", "một trăm", "vài", "nhiều", "mấy", "hàng trăm",
)
TIMES = (
    "hôm nay", "hôm qua", "ngày mai", "sáng nay", "chiều nay", "tối nay",
    "tối qua", "năm ngoái", "năm sau", "tuần trước", "tuần sau", "tháng trước",
    "bây giờ", "mỗi ngày", "cuối tuần", "buổi sáng", "buổi tối", "hằng ngày",
    "lúc đó", "sau đó", "mùa hè", "mùa đông", "ngày xưa", "gần đây",
)
VEHICLES = (
    "xe máy", "xe buýt", "tàu hỏa", "máy bay", "xe đạp", "ô tô", "thuyền",
    "xe khách", "tàu thủy",
)
ABSTRACT_ADJECTIVES = (
    "tốt", "quan trọng", "thú vị", "khó khăn", "đơn giản", "phức tạp",
    "bình thường", "ổn", "vất vả", "hay", "buồn", "đáng nhớ",
)
DRINK_ADJECTIVES = ("nóng", "lạnh", "ngọt", "ngon", "mát", "đặc")
DURATIONS = (
    "hai năm", "ba tháng", "một tuần", "nhiều năm", "mấy ngày", "một tiếng",
    "nửa tiếng", "cả ngày", "mười phút",
)

# Expansions of every slot; word lists are slots too.
RULES: Dict[str, Tuple[str, ...]] = {
    "PRONOUN": PRONOUNS,
    "NAME": PERSONAL_NAMES,
    "TITLE": TITLES,
    "FAMILY": FAMILY,
    "PROFESSION": PROFESSIONS,
    "THING": THINGS,
    "FOOD": FOODS,
    "DRINK": DRINKS,
    "CITY": CITIES,
    "COUNTRY": COUNTRIES,
    "VENUE": VENUES,
    "TOPIC": TOPICS,
    "ABSTRACT": ABSTRACT_NOUNS,
    "ACTIVITY": ACTIVITIES,
    "THING_VERB": THING_VERBS,
    "PERSON_VERB": PERSON_VERBS,
    "FOOD_VERB": FOOD_VERBS,
    "MOTION_VERB": MOTION_VERBS,
    "COGNITION_VERB": COGNITION_VERBS,
    "ASPECT": ASPECTS,
    "DEGREE": DEGREES,
    "PERSON_ADJ": PERSON_ADJECTIVES,
    "THING_ADJ": THING_ADJECTIVES,
    "FOOD_ADJ": FOOD_ADJECTIVES,
    "PLACE_ADJ": PLACE_ADJECTIVES,
    "WEATHER": WEATHER,
    "NUMBER": NUMBERS,
    "TIME": TIMES,
    "DURATION": DURATIONS,
    "VEHICLE": VEHICLES,
    "ABSTRACT_ADJ": ABSTRACT_ADJECTIVES,
    "DRINK_ADJ": DRINK_ADJECTIVES,
    # Phrases. An alternative listed twice is twice as likely.
    "PERSON": (
        "{FAMILY}", "{PROFESSION}", "{TITLE} {NAME}", "{TITLE} {NAME}",
        "{FAMILY} {NAME}", "người bạn", "người {COUNTRY}",
    ),
    "OWNER": ("tôi", "{PRONOUN}", "{PRONOUN}", "{FAMILY}", "{TITLE} {NAME}"),
    "SUBJECT": (
        "tôi", "tôi", "{PRONOUN}", "{PRONOUN}", "{PRONOUN}", "{TITLE} {NAME}",
        "{TITLE} {NAME}", "{FAMILY}", "{FAMILY} {OWNER}", "{FAMILY} của {OWNER}",
        "{PROFESSION} ấy", "những {PROFESSION}", "các {PROFESSION}", "ai",
        "một người bạn của {OWNER}", "mọi người", "nhiều người",
    ),
    "PERSON_NP": (
        "{PERSON}", "{FAMILY} của {OWNER}", "{FAMILY} {OWNER}", "{PRONOUN}",
        "những {PROFESSION}", "một {PROFESSION}", "{TITLE} {NAME}", "tôi",
    ),
    "THING_NP": (
        "{THING}", "{THING} {THING_ADJ}", "{THING} này", "{THING} đó",
        "{THING} của {OWNER}", "một {THING}", "{NUMBER} {THING}",
        "những {THING} {THING_ADJ}", "{THING} {THING_ADJ} và {THING}",
    ),
    "FOOD_NP": (
        "{FOOD}", "{FOOD} {FOOD_ADJ}", "một bát {FOOD}", "{FOOD} {CITY}",
        "{FOOD} và {FOOD}", "hai đĩa {FOOD}",
    ),
    "DRINK_NP": ("{DRINK}", "một cốc {DRINK}", "hai ly {DRINK}", "{DRINK} {DRINK_ADJ}"),
    "PLACE": ("{CITY}", "{VENUE}", "{COUNTRY}", "{VENUE} {OWNER}", "{VENUE} ở {CITY}"),
    # Predicates without a subordinate clause.
    "SIMPLE_VP": (
        "{ASPECT} {ACTIVITY}", "{ACTIVITY} {TIME}", "{ASPECT} {FOOD_VERB} {FOOD_NP}",
        "{ASPECT} uống {DRINK_NP}", "{ASPECT} {THING_VERB} {THING_NP}",
        "{ASPECT} {PERSON_VERB} {PERSON_NP}", "{ASPECT} {MOTION_VERB} {PLACE}",
        "có {THING_NP}", "không có {THING_NP}", "không {THING_VERB} {THING_NP}",
        "không {ACTIVITY}", "{DEGREE} {PERSON_ADJ}", "không {PERSON_ADJ} lắm",
        "thích {ACTIVITY}", "muốn {MOTION_VERB} {PLACE}", "cần {THING_NP}",
        "sống ở {CITY}", "làm việc ở {VENUE}", "học {TOPIC}", "{PERSON_ADJ} lắm",
        "là {PROFESSION}", "{PERSON_ADJ} và {PERSON_ADJ}", "không thích {FOOD}",
        "{ACTIVITY} với {PERSON_NP}", "{ASPECT} {ACTIVITY} ở {VENUE}",
        "{ASPECT} {FOOD_VERB} {FOOD} ở {VENUE}", "{ACTIVITY} và {ACTIVITY}",
        "{ASPECT} {MOTION_VERB} {PLACE} bằng {VEHICLE}",
    ),
    "VP": (
        "{SIMPLE_VP}", "{SIMPLE_VP}", "{SIMPLE_VP}", "{SIMPLE_VP}",
        "{COGNITION_VERB} là {SUBJECT} {SIMPLE_VP}",
        "{COGNITION_VERB} {SUBJECT} {SIMPLE_VP}",
        "{SIMPLE_VP} và {SIMPLE_VP}", "{SIMPLE_VP} rồi {SIMPLE_VP}",
    ),
}

TEMPLATES = (
    "{SUBJECT} {VP}",
    "{SUBJECT} {VP}",
    "{SUBJECT} {VP}",
    "{TIME} {SUBJECT} {VP}",
    "{SUBJECT} {SIMPLE_VP} {TIME}",
    "{SUBJECT} và {PERSON_NP} {SIMPLE_VP}",
    "{SUBJECT} có {ACTIVITY} không",
    "{SUBJECT} có {PERSON_ADJ} không",
    "{SUBJECT} có thích {FOOD_NP} không",
    "{SUBJECT} đã {MOTION_VERB} {PLACE} chưa",
    "{SUBJECT} {ASPECT} {ACTIVITY} {DURATION}",
    "{THING_NP} này là của {OWNER}",
    "đây là {THING} của {OWNER}",
    "đây là {FAMILY} {OWNER}",
    "đó là một {THING} {THING_ADJ}",
    "{CITY} là một thành phố {PLACE_ADJ}",
    "{CITY} là thành phố {PLACE_ADJ} nhất việt nam",
    "ở {CITY} có nhiều {VENUE} {PLACE_ADJ}",
    "trong {VENUE} có {NUMBER} người",
    "{VENUE} ở {CITY} {DEGREE} {PLACE_ADJ}",
    "{TIME} trời {WEATHER} quá",
    "{TIME} trời {WEATHER} nên {SUBJECT} {SIMPLE_VP}",
    "nếu {SUBJECT} {SIMPLE_VP} thì {SUBJECT} {SIMPLE_VP}",
    "vì {SUBJECT} {SIMPLE_VP} nên {SUBJECT} {SIMPLE_VP}",
    "khi {SUBJECT} {SIMPLE_VP} thì {SUBJECT} {SIMPLE_VP}",
    "{SUBJECT} {SIMPLE_VP} nhưng {SUBJECT} {SIMPLE_VP}",
    "những {THING} này {DEGREE} {THING_ADJ}",
    "{FOOD} ở {CITY} {DEGREE} {FOOD_ADJ}",
    "{SUBJECT} không biết {PERSON_NP} ở đâu",
    "{SUBJECT} muốn {MOTION_VERB} {PLACE} với {PERSON_NP}",
    "{SUBJECT} {ASPECT} học {TOPIC} được {DURATION}",
    "{SUBJECT} đợi {PERSON_NP} {DURATION} rồi",
    "tên của {OWNER} là {NAME}",
    "{THING_NP} giá bao nhiêu",
    "{PRONOUN} muốn {FOOD_VERB} gì",
    "{PRONOUN} {ASPECT} {MOTION_VERB} đâu",
    "{ABSTRACT} của {OWNER} {DEGREE} {ABSTRACT_ADJ}",
    "{ABSTRACT} {DEGREE} {ABSTRACT_ADJ} với {PERSON_NP}",
    "{SUBJECT} đã kể cho {PERSON_NP} một câu chuyện {ABSTRACT_ADJ}",
    "{SUBJECT} là một {PROFESSION} {PERSON_ADJ}",
    "{SUBJECT} và {PERSON_NP} là những người bạn",
    "{TIME} {SUBJECT} không {ACTIVITY} mà {ACTIVITY}",
    "{PERSON_NP} {ASPECT} {PERSON_VERB} {PERSON_NP} ở {VENUE}",
    "{SUBJECT} {DEGREE} {PERSON_ADJ} vì {ABSTRACT} {ABSTRACT_ADJ}",
    "{DURATION} nữa {SUBJECT} sẽ {MOTION_VERB} {PLACE}",
)

_SLOT = re.compile(r"\{([A-Z_]+)\}")


def expand(template: str, rng: np.random.Generator) -> str:
  """Replaces every ``{SLOT}`` of ``template`` (recursively) by a uniform choice of ``RULES``."""
  def choose(match: "re.Match[str]") -> str:
    alternatives = RULES[match.group(1)]
    return expand(alternatives[rng.integers(len(alternatives))], rng)
  return _SLOT.sub(choose, template)


def generate_sentences(rng: np.random.Generator, count: int) -> List[str]:
  """``count`` sentences of ``MIN_WORDS``..``MAX_WORDS`` words.

  Each is lower case NFC, words separated by single spaces, no punctuation.
  The same generator state gives the same sentences.
  """
  sentences = []
  while len(sentences) < count:
    template = TEMPLATES[rng.integers(len(TEMPLATES))]
    words = expand(template, rng).split()
    if MIN_WORDS <= len(words) <= MAX_WORDS:
      sentences.append(" ".join(words))
  return sentences


def lexicon_words() -> List[str]:
  """Every word (syllable) that ``generate_sentences`` can produce, sorted."""
  words = set()
  for text in TEMPLATES + tuple(t for alternatives in RULES.values() for t in alternatives):
    words.update(_SLOT.sub(" ", text).split())
  return sorted(words)


def word_frequencies(sentences: Iterable[str]) -> Dict[str, Tuple[float, float]]:
  """Per word: (share of all word tokens, share of sentences that contain it).

  Both in [0, 1]; e.g. ``{"tôi": (0.03, 0.25)}`` means 3 % of tokens are "tôi"
  and a quarter of the sentences contain it.
  """
  tokens = collections.Counter()
  containing = collections.Counter()
  sentence_count = 0
  for sentence in sentences:
    words = sentence.split()
    tokens.update(words)
    containing.update(set(words))
    sentence_count += 1
  total = sum(tokens.values())
  return {w: (tokens[w] / total, containing[w] / sentence_count) for w in tokens}

