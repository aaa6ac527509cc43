"""Word error rate with NIST sclite, cross-checked with jiwer, into a JSON summary.

Conventions (ESPnet's ``egs2/TEMPLATE/asr1/asr.sh``, stage "scoring"):

* ``ref.trn`` / ``hyp.trn``: one line per reference utterance, in reference order,
  ``<words><TAB>(<speaker>-<uttid>)``, the speaker from ``utt2spk``; sclite runs as
  ``sclite -r ref.trn trn -h hyp.trn trn -i rm -o all stdout > result.txt``.
  (ESPnet pastes the speaker from the *reference* utt2spk onto the hypothesis lines too.)
* Text normalisation (``normalize_text``), the same for reference and hypothesis: Unicode NFKC;
  lower case; curly apostrophes (U+2018, U+2019, U+02BC) become ``'``; every other punctuation
  character (Unicode category P*) becomes a space; whitespace is collapsed. Apostrophes are kept
  (``don't``); symbols such as ``$`` or ``+`` (category S*; ``%`` is punctuation in Unicode) and
  digits are kept as they are.
* A reference utterance without a hypothesis is scored as an empty hypothesis (all deletions) and
  listed under ``missing_hypotheses``. A hypothesis id absent from the reference is an error.
* The summary's ``wer`` is ``100 * errors / reference words`` from sclite's count table (exact),
  checked against jiwer (``sclite_agrees``): jiwer's alignment has the fewest edits, sclite's the
  lowest weighted cost (substitution 4, insertion and deletion 3), which can take a few more edits
  when a hypothesis is much longer or shorter than its reference. Both optima are checked exactly:
  sclite counts no fewer edits than jiwer, and jiwer's alignment costs no less than sclite's in
  sclite's weights; otherwise ``ScoringError`` is raised.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import jiwer

from espnet_omni_avsr.prep.kaldi_dir import KaldiDirError, read_table
from espnet_omni_avsr.utils.atomic_files import atomic_write_text

PathLike = Union[str, os.PathLike]
SCLITE_CANDIDATES = ("sclite", "/usr/lib/sctk/bin/sclite")
NORMALIZATION = (
    "NFKC; lower case; curly apostrophes -> '; other punctuation (Unicode P*) -> space; whitespace collapsed"
)
_APOSTROPHES = {"\u2018": "'", "\u2019": "'", "\u02bc": "'"}


class ScoringError(RuntimeError):
    """Scoring cannot give a trustworthy number (missing tool, bad input, disagreeing scorers)."""


SCLITE_WEIGHTS = {"sub": 4, "del": 3, "ins": 3}  # sclite's default alignment costs


def weighted_cost(counts: dict) -> int:
    return sum(w * counts[k] for k, w in SCLITE_WEIGHTS.items())


def sclite_agrees(sclite_counts: dict, jiwer_counts: dict) -> bool:
    """Whether the two alignments are each optimal for their own criterion (module docstring):
    jiwer's has the fewest edits, sclite's the lowest weighted cost."""
    return (sclite_counts["err"] >= jiwer_counts["err"]
            and weighted_cost(sclite_counts) <= weighted_cost(jiwer_counts))


def normalize_text(text: str) -> str:
    """The normalisation applied to references and hypotheses alike (see the module docstring)."""
    text = unicodedata.normalize("NFKC", text).lower()
    chars = []
    for ch in text:
        ch = _APOSTROPHES.get(ch, ch)
        if ch != "'" and unicodedata.category(ch).startswith("P"):
            ch = " "
        chars.append(ch)
    return " ".join("".join(chars).split())


def read_text(path: PathLike, allow_empty: bool = True) -> Dict[str, str]:
    """Kaldi ``text`` (or any ``uttid value`` list) -> {uttid: value} in file order; an id alone is
    an empty text when ``allow_empty``. Read errors become ScoringError naming file:line."""
    try:
        return read_table(str(path), allow_empty=allow_empty)
    except KaldiDirError as e:
        raise ScoringError(str(e)) from e


def trn_line(words: str, spk: str, utt: str) -> str:
    """ESPnet's trn line: ``words<TAB>(spk-utt)``."""
    for name, value in (("speaker", spk), ("utterance id", utt)):
        if any(c in value for c in "() \t"):
            raise ScoringError(f"{name} {value!r} contains a space or parenthesis: not valid in a trn id")
    return f"{words}\t({spk}-{utt})"


def write_trn(path: PathLike, texts: Dict[str, str], order: List[str], utt2spk: Dict[str, str]) -> None:
    atomic_write_text(path, "".join(trn_line(texts[utt], utt2spk[utt], utt) + "\n" for utt in order))


def find_sclite(sclite: Optional[str] = None) -> Optional[str]:
    """The sclite executable: ``sclite`` if given, else PATH, else Debian's /usr/lib/sctk/bin."""
    for cand in ([sclite] if sclite else SCLITE_CANDIDATES):
        path = shutil.which(cand) or (cand if os.path.isfile(cand) and os.access(cand, os.X_OK) else None)
        if path:
            return path
    return None


_SUM_COUNTS = re.compile(
    r"^\s*\|\s*Sum\s*\|\s*(\d+)\s+(\d+)\s*\|\s*(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s*\|", re.M
)
_NUM = r"(-?\d+(?:\.\d+)?)"
_SUM_PERCENT = re.compile(
    r"^\s*\|\s*Sum/Avg\s*\|\s*(\d+)\s+(\d+)\s*\|\s*" + r"\s+".join([_NUM] * 6) + r"\s*\|", re.M
)
_KEYS = ("corr", "sub", "del", "ins", "err", "sent_err")


def parse_sclite_result(text: str, source: str = "result.txt") -> Tuple[dict, dict]:
    """sclite ``-o all`` output -> (counts, percentages), each with num_utts, num_words and _KEYS."""
    m_c, m_p = _SUM_COUNTS.search(text), _SUM_PERCENT.search(text)
    if m_c is None or m_p is None:
        raise ScoringError(f"{source}: no 'Sum' and 'Sum/Avg' lines found; is it sclite '-o all' output?")
    counts = {"num_utts": int(m_c.group(1)), "num_words": int(m_c.group(2))}
    counts.update({k: int(v) for k, v in zip(_KEYS, m_c.groups()[2:])})
    percent = {"num_utts": int(m_p.group(1)), "num_words": int(m_p.group(2))}
    percent.update({k: float(v) for k, v in zip(_KEYS, m_p.groups()[2:])})
    return counts, percent


def run_sclite(sclite: str, ref_trn: Path, hyp_trn: Path, result: Path) -> str:
    cmd = [sclite, "-r", str(ref_trn), "trn", "-h", str(hyp_trn), "trn", "-i", "rm", "-o", "all", "stdout"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    atomic_write_text(result, proc.stdout)
    if proc.returncode != 0:
        raise ScoringError(
            f"sclite failed (exit {proc.returncode}): {' '.join(cmd)}\n{proc.stderr.strip()[-2000:]}"
        )
    return proc.stdout


def jiwer_counts(refs: List[str], hyps: List[str]) -> dict:
    out = jiwer.process_words(refs, hyps)
    n_words = sum(len(r.split()) for r in refs)
    sent_err = 0
    for r, h in zip(refs, hyps):
        sent_err += r.split() != h.split()
    err = out.substitutions + out.deletions + out.insertions
    return {
        "num_utts": len(refs), "num_words": n_words, "corr": out.hits, "sub": out.substitutions,
        "del": out.deletions, "ins": out.insertions, "err": err, "sent_err": sent_err,
    }


def _percent(counts: dict) -> dict:
    n_w, n_u = counts["num_words"], counts["num_utts"]
    p = {"num_utts": n_u, "num_words": n_w}
    for k in _KEYS:
        base = n_u if k == "sent_err" else n_w
        p[k] = round(100.0 * counts[k] / base, 1) if base else 0.0
    return p


def llm_token_rate(llm_tokens: PathLike, utt2dur: PathLike) -> dict:
    """Sum of LLM input tokens over the decoded utterances / their summed duration (seconds)."""
    tokens = read_text(llm_tokens, allow_empty=False)
    durs = read_text(utt2dur, allow_empty=False)
    missing = [u for u in tokens if u not in durs]
    if missing:
        raise ScoringError(f"{len(missing)} utterances of {llm_tokens} have no duration in {utt2dur}: {missing[:10]}")
    try:
        total = sum(int(v) for v in tokens.values())
        seconds = sum(float(durs[u]) for u in tokens)
    except ValueError as e:
        raise ScoringError(f"non-numeric value in {llm_tokens} or {utt2dur}: {e}") from e
    if seconds <= 0:
        raise ScoringError(f"total duration of the decoded utterances is {seconds} s ({utt2dur})")
    return {"total_tokens": total, "duration_s": round(seconds, 3), "per_second": total / seconds,
            "num_utts": len(tokens), "llm_tokens_file": str(llm_tokens), "utt2dur": str(utt2dur)}


def score(
    ref: PathLike,
    hyp: PathLike,
    out_dir: PathLike,
    utt2spk: Optional[PathLike] = None,
    sclite: Optional[str] = None,
    allow_jiwer_fallback: bool = False,
    wer_tolerance: float = 0.05,
    llm_tokens: Optional[PathLike] = None,
    utt2dur: Optional[PathLike] = None,
) -> dict:
    """Score ``hyp`` against ``ref`` (Kaldi text files) into ``out_dir`` and return the summary.

    Writes ref.trn, hyp.trn, result.txt (sclite's report, or jiwer's alignment in the fallback) and
    summary.json. ``utt2spk`` defaults to ``<ref dir>/utt2spk``; without one every utterance is its
    own speaker (warned). ``llm_tokens`` + ``utt2dur`` (given, or defaulting to ``<hyp dir>/llm_tokens``
    and ``<ref dir>/utt2dur`` when those exist) add ``llm_tokens`` (tokens per second) to the summary.
    """
    ref, hyp, out_dir = Path(ref), Path(hyp), Path(out_dir)
    for p in (ref, hyp):
        if not p.is_file():
            raise ScoringError(f"no such file: {p}")
    refs_raw, hyps_raw = read_text(ref), read_text(hyp)
    extra = [u for u in hyps_raw if u not in refs_raw]
    if extra:
        raise ScoringError(
            f"{len(extra)} hypotheses in {hyp} have no reference in {ref} (wrong reference set?): {extra[:10]}"
        )
    order = list(refs_raw)
    missing = [u for u in order if u not in hyps_raw]
    if missing:
        logging.warning(
            f"{len(missing)} of {len(order)} reference utterances have no hypothesis in {hyp}; scored as "
            f"all deletions: {missing[:20]}{' ...' if len(missing) > 20 else ''}"
        )
    refs = {u: normalize_text(t) for u, t in refs_raw.items()}
    hyps = {u: normalize_text(hyps_raw.get(u, "")) for u in order}
    n_words = sum(len(refs[u].split()) for u in order)
    if n_words == 0:
        raise ScoringError(f"{ref} has no reference words after normalisation: WER undefined")

    utt2spk_path = Path(utt2spk) if utt2spk else ref.parent / "utt2spk"
    if utt2spk_path.is_file():
        spk = read_text(utt2spk_path, allow_empty=False)
        no_spk = [u for u in order if u not in spk]
        if no_spk:
            raise ScoringError(f"{len(no_spk)} reference utterances have no speaker in {utt2spk_path}: {no_spk[:10]}")
    elif utt2spk:
        raise ScoringError(f"no such file: {utt2spk_path}")
    else:
        logging.warning(f"no {utt2spk_path}: each utterance is its own speaker in sclite's speaker table")
        spk = {u: u for u in order}

    out_dir.mkdir(parents=True, exist_ok=True)
    write_trn(out_dir / "ref.trn", refs, order, spk)
    write_trn(out_dir / "hyp.trn", hyps, order, spk)
    ref_list, hyp_list = [refs[u] for u in order], [hyps[u] for u in order]
    j_counts = jiwer_counts(ref_list, hyp_list)
    j_wer = 100.0 * j_counts["err"] / n_words

    exe = find_sclite(sclite)
    if exe is not None:
        text = run_sclite(exe, out_dir / "ref.trn", out_dir / "hyp.trn", out_dir / "result.txt")
        counts, percent = parse_sclite_result(text, str(out_dir / "result.txt"))
        if counts["num_words"] != n_words or counts["num_utts"] != len(order):
            raise ScoringError(
                f"sclite counted {counts['num_utts']} utterances / {counts['num_words']} words, expected "
                f"{len(order)} / {n_words} (see {out_dir / 'result.txt'})"
            )
        wer = 100.0 * counts["err"] / n_words
        if not sclite_agrees(counts, j_counts) or abs(percent["err"] - wer) > max(wer_tolerance, 0.05) + 1e-9:
            raise ScoringError(
                f"sclite and jiwer disagree on {hyp}: sclite WER {wer:.3f}% ({counts['err']} errors, printed "
                f"{percent['err']}%), jiwer {j_wer:.3f}% ({j_counts['err']} errors) over {n_words} words"
            )
        if counts["err"] != j_counts["err"]:
            logging.warning(
                f"sclite counts {counts['err']} errors and jiwer {j_counts['err']} on {hyp} (sclite's weighted "
                f"alignment is not always the one with the fewest edits); WERs {wer:.3f} / {j_wer:.3f}"
            )
        scorer = "sclite"
    elif allow_jiwer_fallback:
        logging.warning("sclite not found: scoring with jiwer only (install it with `apt-get install sctk`)")
        counts, percent, wer, scorer = j_counts, _percent(j_counts), j_wer, "jiwer"
        atomic_write_text(
            out_dir / "result.txt",
            "jiwer fallback (sclite not installed)\n"
            + json.dumps(counts) + "\n\n"
            + jiwer.visualize_alignment(jiwer.process_words(ref_list, hyp_list), show_measures=True),
        )
    else:
        raise ScoringError(
            "sclite not found (looked for " + ", ".join([sclite] if sclite else SCLITE_CANDIDATES) + "): "
            "install it with `apt-get install sctk` (Debian/Ubuntu; or build NIST SCTK), "
            "or pass --allow_jiwer_fallback to score with jiwer alone"
        )

    summary = {
        "scorer": scorer,
        "wer": round(wer, 4),
        "jiwer_wer": round(j_wer, 4),
        "num_utts": len(order),
        "num_words": n_words,
        "counts": counts,
        "percent": percent,
        "missing_hypotheses": missing,
        "ref": str(ref),
        "hyp": str(hyp),
        "normalization": NORMALIZATION,
        "llm_tokens": None,
    }
    tok_path = Path(llm_tokens) if llm_tokens else hyp.parent / "llm_tokens"
    dur_path = Path(utt2dur) if utt2dur else ref.parent / "utt2dur"
    if llm_tokens or utt2dur:
        for p in (tok_path, dur_path):
            if not p.is_file():
                raise ScoringError(f"no such file: {p}")
    if tok_path.is_file() and dur_path.is_file():
        summary["llm_tokens"] = llm_token_rate(tok_path, dur_path)
    else:
        logging.info(f"no tokens-per-second figure ({tok_path} or {dur_path} missing)")
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")
    logging.info(f"{hyp}: WER {wer:.2f}% over {n_words} words ({scorer}) -> {out_dir / 'summary.json'}")
    return summary
