"""The built-in texts verify feeds every runtime: a tokenizer probe and a logit prompt.

The probe covers what tokenizers get wrong when a vocabulary or its metadata is rewritten:
prose, code with indentation, other scripts (CJK, Cyrillic, Arabic, Greek, Devanagari), emoji
(including joined sequences), digit runs and runs of spaces, tabs and newlines. It is kept NFC
(llama.cpp applies no Unicode normalizer, so a text NFC changes would differ in llama.cpp's own
conversions too) and its space runs stay below 16 (Gemma's tokenizer.json and SentencePiece split
longer runs differently, whatever the export does). Each snippet is tokenized on its own, so a
mismatch points at the snippet and line where it starts.
"""
from __future__ import annotations

PROBE_SNIPPETS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog. It wasn't the fox's fault; the dog was asleep.",
    "In 1969, 600 million people watched the landing; the mission cost about $25.4 billion (1973 dollars).",
    "Numbers: 0 7 42 123 4567 89012 3.14159 -0.5 1e-9 2026-12-01 12:34:56 +44 20 7946 0958 100%",
    "def area(radius: float) -> float:\n    \"\"\"Return the circle's area.\"\"\"\n    return 3.14159 * radius ** 2\n",
    "for (int i = 0; i < n; ++i) {\n\tsum += a[i] * b[i];\n\tif (sum > LIMIT) break;\n}\n",
    '{"name": "compact", "sizes": [16384, 49152], "ok": true, "nested": {"k": null}}',
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC LIMIT 10;",
    "中文分词测试：今天天气很好，我们去公园散步吧。",
    "日本語のテキスト：東京は日本の首都です。カタカナとひらがな。",
    "한국어 문장도 포함합니다. 서울은 대한민국의 수도입니다.",
    "Русский текст: Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "النص العربي: مرحبا بالعالم، هذه جملة للاختبار.",
    "Ελληνικά: Γειά σου Κόσμε. हिन्दी: नमस्ते दुनिया।",
    "Emoji: 😀 🚀🔥 👍🏽 👨‍👩‍👧‍👦 🇫🇷 ❤️ ✨✨✨",
    "Mixed: naïve café résumé — “quotes” ‘single’ … © ® ™ € £ ¥ ± × ÷ ≤ ≥ ≠ ∞",
    "spaces:  two   three    four        eight           eleven end",
    "tabs:\tone\t\ttwo\t\t\tthree\t \t mixed",
    "newlines:\nsingle\n\ndouble\n\n\ntriple\n\n\n\n\nfive\r\nwindows\r\n",
    "   leading spaces and trailing spaces   ",
    "\n\nstarts with newlines and ends with them\n\n",
    "indent:\n    four\n        eight\n\t\ttabs\n  \n\t\n",
    "URL https://example.com/path?q=1&lang=en#frag and e-mail someone@example.org",
    "CamelCaseIdentifier snake_case_identifier SCREAMING_CASE kebab-case-word x1y2z3",
)
PROBE_TEXT = "\n".join(PROBE_SNIPPETS)
PROMPT = ("The three most useful things to know about Python lists are that they are ordered, mutable and "
          "can hold any object.\ndef mean(values):\n    return sum(values) / len(values)\n")


def snippet_line(index: int) -> int:
    """1-based line of PROBE_TEXT where snippet `index` starts."""
    return 1 + sum(s.count("\n") + 1 for s in PROBE_SNIPPETS[:index])
