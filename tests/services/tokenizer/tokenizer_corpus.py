"""A deterministic corpus of more than 1,000 strings for parity tests: code,
whitespace runs, every special token's text, emoji, CJK, RTL text, combining
characters, numbers, news text, and seeded random Unicode."""

import json
import random
from pathlib import Path

from dbrx_serve.services.tokenizer.vocab import SPECIAL_TOKENS

CODE = [
    "def f(x):\n    return x  # ok\n\n\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "fn main() { println!(\"{:?}\", vec![1, 2, 3]); }",
    "<div class=\"x\">\r\n  <span>&amp;</span>\r\n</div>",
    "x = {'a': [1, 2.5e-3, None], \"b\": (True,)}\n",
    "    if err != nil {\n        return nil, err\n    }\n",
    "#!/bin/bash\nset -euo pipefail\necho \"$HOME\" | tr a-z A-Z\n",
    "λx. x + 1 ⇒ ∀ε>0 ∃δ>0: |x−y|<δ",
    "I'm sure you'll see they've done it, we're told; she'd said it's DON'T",
]
WHITESPACE = [" ", "  ", "\t", "\n", "\n\n", "\r\n", " \n ", "   \t\t  ", "\n\n\n\n", "a  b   c    d",
              "trailing   ", "   leading", "\u00a0nbsp\u00a0", "\u2003em space", "\x0b\x0c", "\u3000ideographic"]
EMOJI = ["🦙", "🎉!", "I love 🦙 and 🎉!", "👨‍👩‍👧‍👦", "👍🏽", "🇫🇷🇯🇵", "❤️‍🔥", "🏳️‍🌈", "😀😃😄😁", "🧑🏿‍🚀 in 🚀"]
CJK = ["你好，世界！", "世", "日本語のテキストです。", "한국어 문장입니다.", "漢字かなカナ混じり文", "中文 and English 混合",
       "𠀀𠀁𠀂 (extension B)", "「引用」と『二重』"]
RTL = ["שלום עולם", "مرحبا بالعالم", "ابجد 123 هوز", "English then עברית then English", "‏RLM‏ and ‎LRM‎",
       "فارسی: سلام دنیا"]
COMBINING = ["e\u0301", "cafe\u0301", "n\u0303o", "Z\u0351\u0352\u0353a\u0354l\u0355g\u0356o", "a\u0308\u0304",
             "\u0915\u094d\u0937", "ประเทศไทย", "tiếng Việt", "\u1100\u1161\u11a8", "o\u0336v\u0336e\u0336r"]
NUMBERS = ["0", "12", "123", "1234", "1234567890", "3.14159", "-42", "1,000,000", "2023-12-31T23:59:59Z", "0x1F600"]


def news_lines(shared_dir: Path, count: int) -> list[str]:
    """Slices of CNN/DailyMail articles: ordinary English prose."""
    out = []
    with open(shared_dir / "data" / "cnn_dailymail_sample.jsonl", encoding="utf-8") as lines:
        for line in lines:
            article = json.loads(line).get("article", "")
            out += [article[i:i + 300] for i in range(0, min(len(article), 1500), 300)]
            if len(out) >= count:
                break
    return out[:count]


def random_unicode(rng: random.Random, length: int) -> str:
    """Code points from across the planes, surrogates excluded."""
    ranges = [(0x20, 0x7E), (0xA0, 0x2FF), (0x300, 0x36F), (0x590, 0x6FF), (0x900, 0x97F), (0x3040, 0x30FF),
              (0x4E00, 0x9FFF), (0xAC00, 0xD7A3), (0x1F300, 0x1FAFF), (0x20000, 0x2A6DF), (0x0, 0x1F)]
    chars = []
    for _ in range(length):
        low, high = rng.choice(ranges)
        chars.append(chr(rng.randint(low, high)))
    return "".join(chars)


def corpus(shared_dir: Path) -> list[str]:
    rng = random.Random(1234)
    specials = list(SPECIAL_TOKENS)
    fragments = CODE + WHITESPACE + EMOJI + CJK + RTL + COMBINING + NUMBERS + specials
    out = list(fragments) + ["", "<|im_start|>user\nHi<|im_end|>", "<|endoftext|><|endoftext|>", "<|pad"]
    out += [a + b for a, b in zip(fragments, reversed(fragments))]
    out += ["".join(rng.choice(fragments) for _ in range(rng.randint(2, 6))) for _ in range(400)]
    out += [random_unicode(rng, rng.randint(1, 40)) for _ in range(300)]
    out += news_lines(shared_dir, 200)
    return out
