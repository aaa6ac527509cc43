"""Text-to-speech with phone timing: espeak-ng and flite through their C libraries (ctypes).

Both engines return `Speech`: 16 kHz float32 mono audio and the phones with start/end times (seconds)
and the index of the word each phone belongs to. The libraries are Debian's `libespeak-ng1` (from the
`espeak-ng` package: `espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, ..., PHONEME_EVENTS | DONT_EXIT)`
with a synth callback collecting PHONEME and WORD events) and `libflite1` (from `flite`: the same
synthesis and phone end times as `flite -psdur`); nothing is downloaded.

Determinism: espeak-ng and flite's clustergen voices (awb, rms, slt) keep state between utterances
(random excitation, pitch flutter), so the same text comes out differently after a different history.
Synthesis therefore runs in a small server process (one per calling process) that loads the
libraries but never synthesises itself: it forks a child per request, and the child answers. The
output is a function of the arguments only, whatever ran before and in whichever worker. The server
imports no numpy/scipy (they are imported inside the functions that need them here) because the
cost of each fork grows with the size of the process. Needs `os.fork` (Linux, macOS).
"""
import atexit
import bisect
import ctypes
import os
import pickle
import struct
import subprocess
import sys
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence, Tuple

if TYPE_CHECKING:
    import numpy as np

SAMPLE_RATE = 16000


class WordAlignmentError(RuntimeError):
    """The engine read the text as a different number of words than it was given."""


@dataclass(frozen=True)
class Phone:
    """One phone: engine-specific name (`alphabet` of its `Speech`), times in seconds, word index or -1."""

    name: str
    start: float
    end: float
    word: int


@dataclass
class Speech:
    audio: "np.ndarray"  # (N,) float32 in [-1, 1], SAMPLE_RATE
    phones: List[Phone]
    alphabet: str  # "espeak" or "arpabet" (flite); see visemes.phone_to_viseme

    @property
    def duration(self) -> float:
        return len(self.audio) / SAMPLE_RATE


# ----------------------------------------------------------------------------- the C libraries

_ESPEAK_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_INIT_PHONEME_EVENTS = 0x0001
_ESPEAK_INIT_DONT_EXIT = 0x8000
_ESPEAK_EVENT_LIST_TERMINATED = 0
_ESPEAK_EVENT_WORD = 1
_ESPEAK_EVENT_PHONEME = 7
_ESPEAK_POS_CHARACTER = 1
_ESPEAK_RATE, _ESPEAK_PITCH, _ESPEAK_RANGE = 1, 3, 4
_ESPEAK_MODIFIERS = "';,%=!#[/-"  # stress and modifier marks; an event of only these is no phone


class _EspeakEvent(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int),
        ("unique_identifier", ctypes.c_uint),
        ("text_position", ctypes.c_int),
        ("length", ctypes.c_int),
        ("audio_position", ctypes.c_int),  # ms
        ("sample", ctypes.c_int),
        ("user_data", ctypes.c_void_p),
        ("id", ctypes.c_char * 8),  # union: the phoneme name for PHONEME events
    ]


_SYNTH_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_EspeakEvent)
)


class _EspeakLibrary:
    """libespeak-ng, initialised once per process (the library allows no more)."""

    def __init__(self, library: str, data_path: Optional[str]):
        lib = self._lib = ctypes.CDLL(library)
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint, ctypes.c_uint,
            ctypes.c_void_p, ctypes.c_void_p,
        ]
        path = data_path.encode() if data_path else None
        flags = _ESPEAK_INIT_PHONEME_EVENTS | _ESPEAK_INIT_DONT_EXIT
        self.sample_rate = lib.espeak_Initialize(_ESPEAK_AUDIO_OUTPUT_SYNCHRONOUS, 0, path, flags)
        if self.sample_rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.sample_rate}); is espeak-ng-data installed?")
        self._chunks: List[bytes] = []
        self._events: List[Tuple[int, int, int, str]] = []
        self._callback = _SYNTH_CALLBACK(self._on_synth)  # must stay referenced
        lib.espeak_SetSynthCallback(self._callback)

    def prepare(self, **_) -> None:
        pass

    def _on_synth(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(ctypes.string_at(wav, num_samples * 2))
        i = 0
        while events[i].type != _ESPEAK_EVENT_LIST_TERMINATED:
            e = events[i]
            if e.type == _ESPEAK_EVENT_WORD:
                self._events.append((e.type, e.audio_position, e.text_position, ""))
            elif e.type == _ESPEAK_EVENT_PHONEME:
                name = bytes(e.id).split(b"\0")[0].decode("utf-8", "replace")
                self._events.append((e.type, e.audio_position, e.text_position, name))
            i += 1
        return 0

    def synth(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int):
        """-> (int16 PCM bytes, sample rate, [(event type, ms, text position, phoneme name)])."""
        if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")
        for param, value in ((_ESPEAK_RATE, rate), (_ESPEAK_PITCH, pitch), (_ESPEAK_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(param, int(value), 0)
        self._chunks, self._events = [], []
        data = text.encode()
        self._lib.espeak_Synth(data, len(data) + 1, 0, _ESPEAK_POS_CHARACTER, 0, 0, None, None)
        self._lib.espeak_Synchronize()
        return b"".join(self._chunks), self.sample_rate, self._events


class _CstWave(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_char_p),
        ("sample_rate", ctypes.c_int),
        ("num_samples", ctypes.c_int),
        ("num_channels", ctypes.c_int),
        ("samples", ctypes.POINTER(ctypes.c_short)),
    ]


class _FliteLibrary:
    """libflite with its US English voices, registered on first use."""

    def __init__(self):
        load = lambda name: ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL)  # noqa: E731
        lib = self._lib = load("libflite.so.1")
        load("libflite_usenglish.so.1")
        load("libflite_cmulex.so.1")
        vp = ctypes.c_void_p
        signatures = {
            "flite_synth_text": (vp, [ctypes.c_char_p, vp]),
            "utt_wave": (ctypes.POINTER(_CstWave), [vp]),
            "utt_relation": (vp, [vp, ctypes.c_char_p]),
            "relation_head": (vp, [vp]),
            "item_next": (vp, [vp]),
            "item_feat_string": (ctypes.c_char_p, [vp, ctypes.c_char_p]),
            "item_feat_float": (ctypes.c_float, [vp, ctypes.c_char_p]),
            "ffeature_string": (ctypes.c_char_p, [vp, ctypes.c_char_p]),
            "feat_set_float": (None, [vp, ctypes.c_char_p, ctypes.c_float]),
            "delete_utterance": (None, [vp]),
        }
        for name, (restype, argtypes) in signatures.items():
            fn = getattr(lib, name)
            fn.restype, fn.argtypes = restype, argtypes
        lib.flite_init()
        self._voices: Dict[str, Tuple[ctypes.CDLL, int]] = {}

    def _voice(self, name: str) -> int:
        if name not in FliteEngine.VOICES:
            raise ValueError(f"unknown flite voice {name!r}; choose from {FliteEngine.VOICES}")
        if name not in self._voices:
            vlib = ctypes.CDLL(f"libflite_cmu_us_{name}.so.1")
            register = getattr(vlib, f"register_cmu_us_{name}")
            register.restype, register.argtypes = ctypes.c_void_p, [ctypes.c_char_p]
            self._voices[name] = (vlib, register(None))
        return self._voices[name][1]

    def prepare(self, voice: str, **_) -> None:
        self._voice(voice)

    def synth(self, text: str, voice: str, duration_stretch: float, f0_mean: Optional[float]):
        """-> (int16 PCM bytes, sample rate, [(segment name, end time, word name)])."""
        lib, handle = self._lib, self._voice(voice)
        features = ctypes.cast(handle, ctypes.POINTER(ctypes.c_void_p))[1]  # cst_voice.features
        lib.feat_set_float(features, b"duration_stretch", float(duration_stretch))
        if f0_mean is not None:
            lib.feat_set_float(features, b"int_f0_target_mean", float(f0_mean))
        utt = lib.flite_synth_text(text.encode(), handle)
        wave = lib.utt_wave(utt).contents
        raw, rate = ctypes.string_at(wave.samples, wave.num_samples * 2), wave.sample_rate
        segments = []
        item = lib.relation_head(lib.utt_relation(utt, b"Segment"))
        while item:
            name = lib.item_feat_string(item, b"name").decode()
            end = float(lib.item_feat_float(item, b"end"))
            word = lib.ffeature_string(item, b"R:SylStructure.parent.parent.R:Token.parent.name").decode()
            segments.append((name, end, word))
            item = lib.item_next(item)
        lib.delete_utterance(utt)
        return raw, rate, segments


# ----------------------------------------------------------------------------- the synthesis server


def _write_msg(fd: int, obj) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    view = memoryview(struct.pack("<Q", len(data)) + data)
    while view:
        view = view[os.write(fd, view) :]


def _read_exact(fd: int, size: int) -> Optional[bytes]:
    parts, left = [], size
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            return None
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _read_msg(fd: int):
    head = _read_exact(fd, 8)
    if head is None:
        return None
    data = _read_exact(fd, struct.unpack("<Q", head)[0])
    return None if data is None else pickle.loads(data)


def serve(request_fd: int, response_fd: int) -> None:
    """Server loop: each (library, init args, method, kwargs) request is answered by a forked child
    with (True, result) or (False, error message); the server itself never synthesises."""
    libraries: Dict[tuple, object] = {}
    while True:
        request = _read_msg(request_fd)
        if request is None:
            return
        kind, init_args, method, kwargs = request
        try:
            key = (kind, tuple(init_args))
            if key not in libraries:
                libraries[key] = {"espeak": _EspeakLibrary, "flite": _FliteLibrary}[kind](*init_args)
            libraries[key].prepare(**kwargs)  # loads what the request needs, so no child loads it again
        except BaseException as exc:  # noqa: BLE001 - reported to the client
            _write_msg(response_fd, (False, f"{type(exc).__name__}: {exc}"))
            continue
        pid = os.fork()
        if pid == 0:
            try:
                ctypes.CDLL(None).srand(ctypes.c_uint(1))
                try:
                    answer = (True, getattr(libraries[key], method)(**kwargs))
                except BaseException as exc:  # noqa: BLE001
                    answer = (False, f"{type(exc).__name__}: {exc}")
                _write_msg(response_fd, answer)
            finally:
                os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            _write_msg(response_fd, (False, f"the synthesis process died (wait status {status})"))


class _Client:
    """The calling process's end of its synthesis server (started on first use)."""

    def __init__(self):
        req_r, req_w = os.pipe()
        resp_r, resp_w = os.pipe()
        package_root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        code = f"from espnet_omni_avsr.prep.avgrid.tts import serve; serve({req_r}, {resp_w})"
        self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(req_r, resp_w), env=env)
        os.close(req_r)
        os.close(resp_w)
        self.request_fd, self.response_fd, self.pid = req_w, resp_r, os.getpid()

    def call(self, kind: str, init_args: tuple, method: str, **kwargs):
        _write_msg(self.request_fd, (kind, init_args, method, kwargs))
        answer = _read_msg(self.response_fd)
        if answer is None:
            raise RuntimeError(f"the TTS server exited (status {self.proc.poll()})")
        ok, result = answer
        if not ok:
            raise RuntimeError(f"{kind}: {result}")
        return result

    def close(self) -> None:
        if self.pid != os.getpid():
            return
        for fd in (self.request_fd, self.response_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


_client: Optional[_Client] = None


def _call(kind: str, init_args: tuple, method: str, **kwargs):
    global _client
    if _client is None or _client.pid != os.getpid() or _client.proc.poll() is not None:
        _client = _Client()
        atexit.register(_client.close)
    return _client.call(kind, init_args, method, **kwargs)


# ----------------------------------------------------------------------------- engines


def _to_16k(raw: bytes, sample_rate: int) -> "np.ndarray":
    import numpy as np
    from scipy.signal import resample_poly

    x = np.frombuffer(raw, dtype=np.int16).astype(np.float32) / 32768.0
    if sample_rate == SAMPLE_RATE:
        return x
    ratio = Fraction(SAMPLE_RATE, sample_rate)
    return resample_poly(x, ratio.numerator, ratio.denominator).astype(np.float32)


def _clip_phones(phones: List[Phone], duration: float) -> List[Phone]:
    out = []
    for p in phones:
        start, end = min(p.start, duration), min(p.end, duration)
        if end > start:
            out.append(Phone(p.name, start, end, p.word))
    return out


def change_speed(speech: Speech, factor: float) -> Speech:
    """Plays the audio `factor` times faster (pitch and formants up by `factor`, a shorter vocal
    tract), like tape speed or ESPnet's speed perturbation; phone times are scaled to match."""
    import numpy as np
    from scipy.signal import resample_poly

    if factor <= 0:
        raise ValueError(f"speed factor must be positive, got {factor}")
    ratio = Fraction(factor).limit_denominator(200)
    if ratio == 1:
        return speech
    audio = resample_poly(speech.audio, ratio.denominator, ratio.numerator).astype(np.float32)
    scale = float(ratio.denominator / ratio.numerator)
    phones = [Phone(p.name, p.start * scale, p.end * scale, p.word) for p in speech.phones]
    return Speech(audio, phones, speech.alphabet)


class EspeakEngine:
    """espeak-ng. Voices: a language ("en-us", "en", "en-gb-scotland", ...) with an optional
    variant ("en-us+m3", "en+klatt2"); rate in words per minute (80-450), pitch and range 0-99.
    Native output is 22050 Hz, resampled to 16 kHz."""

    def __init__(self, library: str = "libespeak-ng.so.1", data_path: Optional[str] = None):
        self._init_args = (library, data_path)

    def synthesize(
        self, words: Sequence[str], voice: str = "en-us", rate: int = 160, pitch: int = 50, pitch_range: int = 50
    ) -> Speech:
        text = " ".join(words)
        raw, native_rate, events = _call(
            "espeak", self._init_args, "synth", text=text, voice=voice, rate=rate, pitch=pitch, pitch_range=pitch_range
        )
        audio = _to_16k(raw, native_rate)
        duration = len(audio) / SAMPLE_RATE
        word_starts, pos = [], 1  # 1-based character offset of each word, as espeak reports
        for w in words:
            word_starts.append(pos)
            pos += len(w) + 1
        word, starts = -1, []  # (name, start, word)
        for kind, ms, text_pos, name in events:
            if kind == _ESPEAK_EVENT_WORD:
                word = max(0, bisect.bisect_right(word_starts, text_pos) - 1)
            elif name.strip(_ESPEAK_MODIFIERS) == "":
                continue  # a modifier (";"): its time goes to the phone before
            else:
                starts.append((name, ms / 1000.0, -1 if name.startswith("_") else word))
        phones = [
            Phone(name, start, starts[i + 1][1] if i + 1 < len(starts) else duration, w)
            for i, (name, start, w) in enumerate(starts)
        ]
        return Speech(audio, _clip_phones(phones, duration), "espeak")


class FliteEngine:
    """flite 2.2. Voices: kal (8 kHz diphone, resampled), kal16 (16 kHz diphone), awb, rms, slt
    (16 kHz clustergen). `duration_stretch` > 1 speaks slower; `f0_mean` sets the target mean
    pitch in Hz (rms ignores it); `NOMINAL_F0` is each voice's own mean."""

    VOICES = ("kal", "kal16", "awb", "rms", "slt")
    NOMINAL_F0 = {"kal": 95.0, "kal16": 95.0, "awb": 130.0, "rms": 105.0, "slt": 175.0}

    def synthesize(
        self, words: Sequence[str], voice: str = "slt", duration_stretch: float = 1.0, f0_mean: Optional[float] = None
    ) -> Speech:
        if voice not in self.VOICES:
            raise ValueError(f"unknown flite voice {voice!r}; choose from {self.VOICES}")
        raw, rate, segments = _call(
            "flite", (), "synth", text=" ".join(words), voice=voice, duration_stretch=duration_stretch, f0_mean=f0_mean
        )
        audio = _to_16k(raw, rate)
        phones, start, word, prev_word_name = [], 0.0, -1, None
        for name, end, word_name in segments:
            if name == "pau":
                w = -1
            else:
                if word_name != prev_word_name:  # text sources never repeat a word back to back
                    word += 1
                prev_word_name = word_name
                w = word
            phones.append(Phone(name, start, end, w))
            start = end
        if word + 1 != len(words):
            raise WordAlignmentError(f"flite returned {word + 1} words for {len(words)}: {' '.join(words)!r}")
        return Speech(audio, _clip_phones(phones, len(audio) / SAMPLE_RATE), "arpabet")
