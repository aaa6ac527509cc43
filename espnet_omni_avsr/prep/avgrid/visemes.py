"""Phones -> visemes -> articulatory targets, and the viseme label of each video frame.

Phones come from flite (ARPAbet in lower case: "aa", "b", "pau") or espeak-ng (its phoneme mnemonics:
"a#", "aI", "dZ", "_:", with stress marks such as "'I" or ",a" from espeak-ng >= 1.52). Both are
mapped to ARPAbet, then to one of 15 viseme classes, groups of phones that look alike on the lips
(p/b/m are one class; k/g/ng/h take their shape from the neighbouring vowels), so lip reading the
rendered video is possible but ambiguous the way real lip reading is.

Each class has articulatory targets (`PARAMS`) that the mouth renderer interpolates between
(coarticulation); diphthongs move from their first to their second target.
"""
import logging
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

VISEMES: Tuple[str, ...] = (
    "sil",  # rest, lips together and relaxed
    "PBM",  # bilabial closure
    "FV",  # lower lip under the upper teeth
    "TH",  # tongue tip between the teeth
    "TDNL",  # alveolar: slightly open, tongue tip behind the teeth
    "SZ",  # sibilant: teeth together, spread
    "SH",  # postalveolar: protruded, teeth together
    "KG",  # velar / glottal: lips free, medium opening
    "R",  # slightly rounded, protruded
    "WUW",  # strongly rounded, small opening
    "IY",  # spread, close front vowels and /j/
    "EH",  # mid-open front vowels
    "AA",  # wide open
    "AO",  # open rounded back vowels
    "AX",  # neutral mid central vowels
)
VISEME_INDEX: Dict[str, int] = {v: i for i, v in enumerate(VISEMES)}

# Articulatory parameters the renderer draws, each in [0, 1].
PARAMS: Tuple[str, ...] = ("open", "width", "round", "teeth_upper", "teeth_lower", "tongue", "tuck", "press")

_TARGETS: Dict[str, Tuple[float, ...]] = {
    #        open  width round t_up t_low tongue tuck press
    "sil": (0.00, 0.50, 0.10, 0.0, 0.0, 0.0, 0.0, 0.2),
    "PBM": (0.00, 0.48, 0.15, 0.0, 0.0, 0.0, 0.0, 1.0),
    "FV": (0.10, 0.55, 0.00, 1.0, 0.0, 0.0, 1.0, 0.0),
    "TH": (0.22, 0.55, 0.00, 0.8, 0.5, 1.0, 0.0, 0.0),
    "TDNL": (0.25, 0.55, 0.05, 0.6, 0.3, 0.35, 0.0, 0.0),
    "SZ": (0.10, 0.72, 0.00, 1.0, 1.0, 0.0, 0.0, 0.0),
    "SH": (0.20, 0.32, 0.65, 0.9, 0.7, 0.0, 0.0, 0.0),
    "KG": (0.35, 0.50, 0.10, 0.3, 0.1, 0.15, 0.0, 0.0),
    "R": (0.20, 0.35, 0.55, 0.4, 0.1, 0.0, 0.0, 0.0),
    "WUW": (0.12, 0.12, 1.00, 0.0, 0.0, 0.0, 0.0, 0.0),
    "IY": (0.25, 0.88, 0.00, 0.7, 0.4, 0.1, 0.0, 0.0),
    "EH": (0.50, 0.72, 0.00, 0.5, 0.3, 0.25, 0.0, 0.0),
    "AA": (0.92, 0.55, 0.05, 0.35, 0.1, 0.45, 0.0, 0.0),
    "AO": (0.62, 0.28, 0.75, 0.2, 0.0, 0.2, 0.0, 0.0),
    "AX": (0.40, 0.50, 0.10, 0.3, 0.1, 0.2, 0.0, 0.0),
}
TARGETS = np.array([_TARGETS[v] for v in VISEMES], dtype=np.float32)  # (V, P)

# How strongly a class imposes its shape on its neighbours (coarticulation dominance).
# Closures and rounding must be reached; velars and schwa take the shape of their context.
DOMINANCE = np.array(
    [{"sil": 0.6, "PBM": 8.0, "FV": 5.0, "TH": 3.0, "TDNL": 0.7, "SZ": 2.0, "SH": 3.0, "KG": 0.35,
      "R": 1.5, "WUW": 4.0, "IY": 2.0, "EH": 1.5, "AA": 2.0, "AO": 2.5, "AX": 0.8}[v] for v in VISEMES],
    dtype=np.float32,
)

_ARPABET_VISEME: Dict[str, str] = {}
for _viseme, _phones in {
    "sil": "pau sil h# sp",
    "PBM": "p b m em",
    "FV": "f v",
    "TH": "th dh",
    "TDNL": "t d n l en el dx nx",
    "SZ": "s z",
    "SH": "sh zh ch jh",
    "KG": "k g ng hh",
    "R": "r er axr",
    "WUW": "w uw",
    "IY": "iy ih y ix",
    "EH": "eh ey ae",
    "AA": "aa ay aw",
    "AO": "ao ow oy uh",
    "AX": "ax ah",
}.items():
    for _p in _phones.split():
        _ARPABET_VISEME[_p] = _viseme

# Diphthongs end on a second viseme.
DIPHTHONG_END: Dict[str, str] = {"ay": "IY", "ey": "IY", "oy": "IY", "aw": "WUW", "ow": "WUW"}

# espeak-ng English mnemonics -> ARPAbet
_ESPEAK_ARPABET: Dict[str, str] = {
    "p": "p", "b": "b", "m": "m", "f": "f", "v": "v", "T": "th", "D": "dh",
    "t": "t", "d": "d", "n": "n", "l": "l", "s": "s", "z": "z", "S": "sh", "Z": "zh", "tS": "ch", "dZ": "jh",
    "k": "k", "g": "g", "N": "ng", "h": "hh", "x": "hh", "?": "hh", "r": "r", "w": "w", "j": "y",
    "@": "ax", "a#": "ax", "@L": "l", "3": "axr", "3:": "er", "VR": "er", "IR": "er", "V": "ah",
    "a": "ae", "aa": "aa", "A": "aa", "A:": "aa", "A@": "aa", "0": "aa",
    "aI": "ay", "aI@": "ay", "aU": "aw", "aU@": "aw",
    "e": "eh", "E": "eh", "e@": "eh", "eI": "ey",
    "i": "iy", "i:": "iy", "I": "ih", "i@": "ih", "I@": "ih",
    "O": "ao", "O:": "ao", "O@": "ao", "o@": "ao", "o": "ao", "OI": "oy", "oU": "ow", "@U": "ow",
    "u": "uw", "u:": "uw", "U": "uh", "U@": "uh",
}
_ESPEAK_MARKS = "'\",%=!"
_ESPEAK_SUFFIXES = "#[;/-"

_logger = logging.getLogger(__name__)
_warned = set()


def espeak_to_arpabet(name: str) -> str:
    """"'aI" -> "ay", "t#" -> "t", "aI2" -> "ay", "_:" -> "pau"; unknown vowels fall back to "ax"."""
    base = name.lstrip(_ESPEAK_MARKS)
    if not base or base.startswith("_"):
        return "pau"
    for candidate in (base, base.rstrip(_ESPEAK_SUFFIXES), base.rstrip("0123456789" + _ESPEAK_SUFFIXES)):
        if candidate in _ESPEAK_ARPABET:
            return _ESPEAK_ARPABET[candidate]
    if base[0] in _ESPEAK_ARPABET and base[0].islower() and base[0] not in "aeiou":
        return _ESPEAK_ARPABET[base[0]]
    if name not in _warned:
        _warned.add(name)
        _logger.warning("unknown espeak-ng phoneme %r: drawn as a neutral vowel", name)
    return "ax"


def to_arpabet(name: str, alphabet: str) -> str:
    if alphabet == "espeak":
        return espeak_to_arpabet(name)
    if alphabet == "arpabet":
        return name.lower().rstrip("012")
    raise ValueError(f"alphabet must be 'espeak' or 'arpabet', got {alphabet!r}")


def phone_to_viseme(name: str, alphabet: str) -> str:
    """The viseme class of one phone; unknown ARPAbet phones are drawn as a neutral vowel (AX)."""
    arpabet = to_arpabet(name, alphabet)
    return _ARPABET_VISEME.get(arpabet, "AX")


def viseme_segments(phones: Sequence, alphabet: str) -> List[Tuple[int, int, float, float]]:
    """Phones (objects with .name, .start, .end) -> (label, target, start, end) segments.

    `label` is the phone's viseme class index, `target` the class whose shape is aimed at: a
    diphthong is split into two halves (0.45 / 0.55 of its duration) aiming at its two visemes.
    """
    out = []
    for p in phones:
        arpabet = to_arpabet(p.name, alphabet)
        label = VISEME_INDEX[_ARPABET_VISEME.get(arpabet, "AX")]
        second = DIPHTHONG_END.get(arpabet)
        if second is None:
            out.append((label, label, p.start, p.end))
        else:
            mid = p.start + 0.45 * (p.end - p.start)
            out.append((label, label, p.start, mid))
            out.append((label, VISEME_INDEX[second], mid, p.end))
    return out


def frame_labels(phones: Sequence, alphabet: str, num_frames: int, fps: float = 25.0) -> np.ndarray:
    """Viseme class index at the centre of each video frame: (num_frames,) int64 (sil outside phones)."""
    labels = np.full(num_frames, VISEME_INDEX["sil"], dtype=np.int64)
    centres = (np.arange(num_frames) + 0.5) / fps
    for label, _, start, end in viseme_segments(phones, alphabet):
        labels[(centres >= start) & (centres < end)] = label
    return labels


def target_track(
    segments: Sequence[Tuple[int, int, float, float]],
    times: np.ndarray,
    targets: Optional[np.ndarray] = None,
    dominance: Optional[np.ndarray] = None,
    anticipation: float = 0.05,
    carryover: float = 0.035,
    rounding_lead: float = 2.0,
) -> np.ndarray:
    """Articulatory parameters at `times` (seconds) by a dominance-function coarticulation model.

    Each segment pulls the parameters towards its target with a weight that is its class dominance
    inside the segment and decays as exp(-(d/tau)^2) with the distance d to the segment, with a
    longer reach before the segment (`anticipation`, seconds) than after it (`carryover`); lip
    rounding is anticipated `rounding_lead` times further ahead (lips round for /uw/ well before
    the sound starts). The result is the dominance-weighted mean of the targets.

    Args:
        segments: (label, target_class, start, end) from `viseme_segments`.
        times: (T,) sample times.
        targets: (S, P) per-segment targets (defaults to the class targets; callers jitter them per token).
        dominance: (S,) per-segment dominance (defaults to the class dominance).
    Returns:
        (T, P) float32.
    """
    rest = TARGETS[VISEME_INDEX["sil"]]
    if len(segments) == 0:
        return np.repeat(rest[None], len(times), axis=0)
    cls = np.array([s[1] for s in segments])
    start = np.array([s[2] for s in segments], dtype=np.float64)[None]  # (1, S)
    end = np.array([s[3] for s in segments], dtype=np.float64)[None]
    tgt = TARGETS[cls] if targets is None else np.asarray(targets, dtype=np.float32)
    dom = DOMINANCE[cls] if dominance is None else np.asarray(dominance, dtype=np.float32)
    t = np.asarray(times, dtype=np.float64)[:, None]  # (T, 1)
    ahead = np.clip(start - t, 0.0, None)
    behind = np.clip(t - end, 0.0, None)
    floor = 1e-3  # a faint pull to the rest shape far from any phone

    def blend(lead: float) -> np.ndarray:
        weight = dom[None] * np.exp(-((ahead / lead + behind / carryover) ** 2))  # (T, S)
        return (weight @ tgt + floor * rest[None]) / (weight.sum(1, keepdims=True) + floor)

    track = blend(anticipation)
    round_col = PARAMS.index("round")
    track[:, round_col] = blend(anticipation * rounding_lead)[:, round_col]
    return track.astype(np.float32)
