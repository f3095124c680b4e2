"""Generate tests/data/varied.txt: about 1000 varied one-line texts for tokenizer agreement tests.

Tokenizer bugs hide in the corners (digit runs, whitespace runs, non-Latin scripts, emoji ZWJ
sequences, special-token strings), so the corpus mixes those with ordinary prose and code. Prose
comes from Python's own `pydoc_data.topics`; everything else is written here. Output is
deterministic for a given Python version; the committed file is what tests read.

    python -m tools.make_varied_corpus [OUT]
"""
from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

import pydoc_data.topics

DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "varied.txt"
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")

CODE = [
    "def fibonacci(n: int) -> int:",
    "    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)",
    "import numpy as np; x = np.arange(10).reshape(2, 5)",
    "with open('data.csv', newline='') as fh: rows = list(csv.reader(fh))",
    "print(f\"{name!r:>10} {value:08.3f} {ratio:.2%}\")",
    "class Node:  # a tree node",
    "    __slots__ = ('left', 'right', 'key')",
    "lambda x, *args, **kwargs: (x, args, kwargs)",
    "assert sorted({3, 1, 2}) == [1, 2, 3], 'set order'",
    "result = [i ** 2 for i in range(100) if i % 3 == 0]",
    "async def fetch(session, url): return await session.get(url)",
    "if __name__ == \"__main__\":",
    "#include <stdio.h>",
    "int main(int argc, char **argv) { printf(\"%d\\n\", argc); return 0; }",
    "for (size_t i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "static inline uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }",
    "typedef struct { float x, y, z; } vec3_t;",
    "#define MAX(a, b) ((a) > (b) ? (a) : (b))",
    "ptr->next = NULL; free(buf); buf = NULL;",
    "{\"name\": \"compact\", \"version\": \"0.1.0\", \"tags\": [\"llm\", \"pruning\"]}",
    "{\"id\": 12345, \"score\": 0.987, \"ok\": true, \"parent\": null}",
    "[{\"x\": 1}, {\"x\": 2}, {\"x\": 3.5e-7}]",
    "{\"text\": \"caf\\u00e9 \\\"quoted\\\" \\\\ backslash\"}",
    "$ ls -la ~/projects | grep -v '^d' | wc -l",
    "export PATH=\"$HOME/.local/bin:$PATH\" && source ~/.bashrc",
    "find . -name '*.py' -print0 | xargs -0 grep -n 'TODO'",
    "curl -sSL -H 'Accept: application/json' http://localhost:8080/api/v1/items?limit=50",
    "git log --oneline --graph --decorate -n 20",
    "tar -czf backup-2024-01-31.tar.gz ./data && echo done",
    "for f in *.txt; do mv \"$f\" \"${f%.txt}.md\"; done",
    "SELECT id, name FROM users WHERE created_at >= '2023-01-01' ORDER BY id DESC LIMIT 10;",
    "const total = items.reduce((acc, x) => acc + x.price * x.qty, 0);",
    "fn main() { let v: Vec<u8> = vec![1, 2, 3]; println!(\"{:?}\", v); }",
    "<div class=\"card\"><a href=\"/docs#intro\">Read more &raquo;</a></div>",
    "x := map[string]int{\"a\": 1, \"b\": 2}",
    "regex = r'^(?P<year>\\d{4})-(?P<month>\\d{2})-(?P<day>\\d{2})$'",
    "a+=1;b-=2;c*=3;d/=4;e%=5;f**=6;g//=7;h<<=1;i>>=2;j&=k;l|=m;n^=o",
    "!==  ===  <=>  ->  =>  ::  ...  ..=  ?.  ??  **=",
]

SCRIPTS = [
    "今天天气很好，我们去公园散步吧。", "这个模型有一亿三千五百万个参数。", "请把第3章翻译成英文。",
    "学习编程需要耐心和练习。", "北京是中国的首都，人口超过两千万。", "他在2019年开始学习中文。",
    "東京の夏はとても暑いです。", "このプログラムは正しく動きますか？", "私は毎朝コーヒーを飲みます。",
    "カタカナとひらがなと漢字を混ぜて書きます。", "３月１５日に会議があります。", "ありがとうございました！",
    "안녕하세요, 만나서 반갑습니다.", "한국어는 한글로 씁니다.", "오늘은 2024년 5월 1일입니다.",
    "이 문장은 토크나이저 시험용입니다.", "서울의 겨울은 춥습니다.",
    "مرحبا بكم في المكتبة العامة.", "اللغة العربية تكتب من اليمين إلى اليسار.", "عندي ٣ كتب و٤ أقلام.",
    "هذا اختبار بسيط للترميز.", "القاهرة مدينة كبيرة وقديمة.",
    "שלום, מה שלומך היום?", "העברית נכתבת מימין לשמאל.", "יש לי 2 חתולים וכלב אחד.", "זה משפט לבדיקה.",
    "नमस्ते, आप कैसे हैं?", "हिंदी देवनागरी लिपि में लिखी जाती है।", "मेरे पास १२ किताबें हैं।",
    "यह वाक्य परीक्षण के लिए है।", "दिल्ली भारत की राजधानी है।",
    "Привет, как дела?", "Москва — столица России.", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "В 2023 году было 365 дней.", "Это предложение для проверки токенизатора.",
    "Γειά σου, κόσμε!", "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.", "Το π ισούται περίπου με 3,14159.",
    "Ξεσκεπάζω την ψυχοφθόρα βδελυγμία.", "αβγδεζηθικλμνξοπρστυφχψω ΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ",
    "สวัสดีครับ ยินดีที่ได้รู้จัก", "ภาษาไทยไม่มีการเว้นวรรคระหว่างคำ", "วันนี้อากาศร้อนมาก",
    "ฉันมี ๕ แมว", "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย",
    "Ça va? Très bien, merci — à demain!", "Größe, Straße, Übermaß: ß ẞ ä ö ü.",
    "¿Dónde está la biblioteca? ¡Aquí!", "Zażółć gęślą jaźń.", "Ærøskøbing og Ålborg ligger i Danmark.",
    "Türkçe: ığüşöç İĞÜŞÖÇ", "Tiếng Việt có nhiều dấu: ả ã ạ ắ ằ ẳ.", "Þetta er íslenska: ð þ æ.",
]

EMOJI = [
    "😀", "😀😃😄😁😆", "I love it ❤️", "👍🏽 great job", "👋🏻👋🏼👋🏽👋🏾👋🏿",
    "👨‍👩‍👧‍👦 family", "👩‍💻 coding at night", "🏳️‍🌈 pride", "🏴‍☠️ pirates", "🧑🏾‍🚀 astronaut",
    "🇯🇵 🇺🇸 🇩🇪 🇧🇷 🇮🇳", "🇺🇳🇪🇺", "1️⃣ 2️⃣ 3️⃣ #️⃣ *️⃣", "☕️ and 🍰 at 3pm", "🚀🚀🚀 to the moon",
    "✅ done ❌ failed ⚠️ warning", "🙂🙃", "🐍 Python 🦀 Rust 🐹 Go", "👁️‍🗨️", "❤️‍🔥 ❤️‍🩹",
    "🤷‍♂️🤷‍♀️", "🫠🫶🏻🪿", "⭐️⭐⭐️", "🎉🎊🥳 Happy New Year 2025!", "text😀text",
    "©️ ®️ ™️ ℹ️", "🏃‍➡️ running right", "👨🏻‍🤝‍👨🏿", "🇬🇧🏴󠁧󠁢󠁳󠁣󠁴󠁿🏴󠁧󠁢󠁷󠁬󠁳󠁿", "(╯°□°)╯︵ ┻━┻",
    "¯\\_(ツ)_/¯", "♠♣♥♦ ♤♧♡♢", "→ ← ↑ ↓ ⇒ ⇔ ∀ ∃ ∈ ∉ ∑ ∏ √ ∞ ≈ ≠ ≤ ≥",
    "“curly quotes” ‘single’ «guillemets» „Anführung“", "en–dash em—dash … ellipsis • bullet",
    "½ ¼ ¾ ² ³ ¹ ⁰ ₀ ₁ ₂", "Ⅰ Ⅱ Ⅲ Ⅳ Ⅻ", "１２３４５ ＡＢＣ ｱｲｳ", "٠١٢٣٤٥٦٧٨٩ ۰۱۲۳", "०१२३४५६७८९",
    "zero\u200bwidth\u200bspace", "soft\u00adhyphen", "non\u00a0breaking\u00a0space", "e\u0301 vs é",
    "\u202eright-to-left override\u202c", "a\u200db", "ﬁ ﬂ ﬃ ligatures", "𝓗𝓮𝓵𝓵𝓸 𝕎𝕠𝕣𝕝𝕕",
]

SPECIAL = [
    "<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|im_start|>user", "<|im_start|>assistant",
    "<|im_start|>system You are helpful.<|im_end|>", "Hello<|endoftext|>World",
    "<|im_end|><|im_start|>", "<|im_start|><|im_start|><|im_start|>", " <|im_start|> ",
    "  <|im_end|>  ", "<|im_start|", "|im_start|>", "< |im_start|>", "<|IM_START|>",
    "<repo_name>compact-convert<file_sep>README.md", "<filename>main.py", "<gh_stars>1000",
    "<issue_start>bug<issue_comment>fixed<issue_closed>", "<jupyter_start><jupyter_code>print(1)",
    "<jupyter_output>1<empty_output>", "<jupyter_text>notes<jupyter_script>", "<reponame>x",
    "text <|endoftext|> text", "<|endoftext|><|endoftext|>", "<|im_end|>\t<|im_start|>",
    "<s> </s> <unk> <pad> [CLS] [SEP] [MASK]", "<|begin_of_text|><|eot_id|>", "<|endoftext|>123",
    "123<|im_end|>456",
]


def prose_lines(count: int, rng: random.Random) -> list[str]:
    """Sentences from the Python documentation bundled with the interpreter."""
    sentences: list[str] = []
    for key in sorted(pydoc_data.topics.topics):
        text = " ".join(pydoc_data.topics.topics[key].split())
        for sentence in re.split(r"(?<=[.!?])\s+", text):
            if 20 <= len(sentence) <= 300:
                sentences.append(sentence)
    return rng.sample(sentences, count)


def doc_code_lines(count: int, rng: random.Random) -> list[str]:
    """Indented lines from the docs' examples: real code with leading-space runs."""
    lines = [
        line.rstrip()
        for key in sorted(pydoc_data.topics.topics)
        for line in pydoc_data.topics.topics[key].splitlines()
        if line.startswith("   ") and line.strip() and len(line) < 200
    ]
    return rng.sample(sorted(set(lines)), count)


def number_lines(count: int, rng: random.Random) -> list[str]:
    """Numbers, dates, times, versions and money in many formats."""
    r = rng.randint
    makers = [
        lambda: str(r(0, 10 ** r(1, 15))),
        lambda: f"{rng.uniform(-1e6, 1e6):,.2f}",
        lambda: f"{rng.random():.{r(1, 12)}f}",
        lambda: f"{rng.uniform(1e-12, 1e12):.3e}",
        lambda: f"{r(1900, 2099)}-{r(1, 12):02d}-{r(1, 28):02d}",
        lambda: f"{r(1, 28)}/{r(1, 12)}/{r(0, 99):02d}",
        lambda: f"{r(0, 23):02d}:{r(0, 59):02d}:{r(0, 59):02d}.{r(0, 999):03d}Z",
        lambda: f"v{r(0, 9)}.{r(0, 30)}.{r(0, 200)}",
        lambda: f"${r(0, 9999)}.{r(0, 99):02d} (was €{r(0, 9999)})",
        lambda: f"{r(0, 100)}% of {r(1, 10 ** 6)} items",
        lambda: f"0x{rng.getrandbits(32):08X} 0b{rng.getrandbits(8):08b} 0o{rng.getrandbits(9):o}",
        lambda: f"+1 ({r(200, 999)}) {r(100, 999)}-{r(1000, 9999)}",
        lambda: f"{r(1, 9)}  {r(10, 99)}   {r(100, 999)}    {r(1000, 9999)}",
        lambda: f"ISBN 978-{r(0, 9)}-{r(100, 999)}-{r(10000, 99999)}-{r(0, 9)}",
        lambda: f"{r(1, 31)} March {r(1000, 2100)}, {r(1, 12)}:{r(0, 59):02d} pm",
        lambda: f"x{r(0, 99)}y{r(0, 999)}z{r(0, 9)}",
        lambda: f"{r(-500, 500)}°C, {rng.uniform(0, 100):.1f}km/h, {r(0, 10**4)}m²",
        lambda: "".join(str(r(0, 9)) for _ in range(r(20, 60))),
    ]
    return [makers[i % len(makers)]() for i in range(count)]


def whitespace_lines(count: int, rng: random.Random) -> list[str]:
    """Runs of spaces and tabs in every position, around words, digits and punctuation."""
    pieces = ["word", "x", "42", "7", "(", ")", "def", "ß", "中文", "😀", "-", ".", "<|im_end|>"]
    lines = [" ", "  ", "    ", "\t", "\t\t", " \t \t ", "        end", "start        ", "\t\tindented"]
    lines.append("a\tb\tc")
    while len(lines) < count:
        parts = []
        for _ in range(rng.randint(1, 6)):
            parts.append(rng.choice([" ", "\t"]) * rng.randint(0, 9))
            parts.append(rng.choice(pieces))
        parts.append(rng.choice([" ", "\t", ""]) * rng.randint(0, 5))
        lines.append("".join(parts))
    return lines[:count]


def build_lines(seed: int = 20240601) -> list[str]:
    """Every corpus line, in a fixed order."""
    rng = random.Random(seed)
    lines = (
        prose_lines(400, rng)
        + doc_code_lines(120, rng)
        + CODE
        + number_lines(180, rng)
        + SCRIPTS
        + EMOJI
        + whitespace_lines(130, rng)
        + SPECIAL
    )
    for line in lines:
        if _LINE_BREAKS.search(line):
            raise ValueError(f"corpus line contains a line break: {line!r}")
    return lines


def write_corpus(out: Path = DEFAULT_OUT) -> Path:
    """Write the corpus, one entry per line, UTF-8, '\\n' line ends."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(build_lines()) + "\n", encoding="utf-8", newline="\n")
    return out


def read_corpus(path: Path = DEFAULT_OUT) -> list[str]:
    """The lines back, whitespace intact (str.splitlines would also split on other separators)."""
    return path.read_text(encoding="utf-8").split("\n")[:-1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m tools.make_varied_corpus", description=__doc__.splitlines()[0]
    )
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    print(write_corpus(args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
