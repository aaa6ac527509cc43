"""Numbers in English words, the way transcripts of read speech write them ("1066" -> "one
thousand sixty six": no "and", as US read speech and the LibriSpeech-style references have it).
One helper for the corpus text (prep/avgrid/open_text.py) and the real-speech scoring
(pretrained/verify.py, bin/eval_real_speech.py), so that both spell a number alike."""

_ONES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen"
).split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()


def number_to_words(n: int) -> str:
    """0 <= n < 10**9 in English words: 42 -> "forty two", 2000017 -> "two million seventeen"."""
    if not 0 <= n < 10**9:
        raise ValueError(f"number out of range [0, 10**9): {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else " " + _ONES[n % 10])
    for size, word in ((10**6, "million"), (1000, "thousand"), (100, "hundred")):
        if n >= size:
            rest = "" if n % size == 0 else " " + number_to_words(n % size)
            return f"{number_to_words(n // size)} {word}{rest}"
    raise AssertionError("unreachable")
