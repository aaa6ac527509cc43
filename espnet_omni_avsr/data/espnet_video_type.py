"""The ``video`` data type for ESPnet's datasets.

After :func:`register_video_data_type`, ESPnet reads video scps like any other input::

    --train_data_path_and_name_and_type dump/video.scp,video,video

where each scp line is ``utt_id path_or_spec`` (.mp4/.avi/.mkv/.webm, .npy, or ``foo.ark:123``;
see :mod:`espnet_omni_avsr.data.video_io`).

How it plugs in: one entry in ESPnet's ``DATA_TYPES`` (data/espnet_data_types.py). Call
:func:`register_video_data_type` before the task builds its parser (the AVSR task module does it
at import). ``IterableESPnetDataset`` (inference) has its own table without ``video`` and falls
back to an ``ESPnetDataset`` for such keys, so it works too.

dtype: ESPnetDataset casts every array by its dtype kind: floats to ``float_dtype``, signed
integers to ``int_dtype`` (int64), anything else, uint8 included, raises ``NotImplementedError``.
So the loader hands frames out as int16 (values 0..255), the dataset widens them to int64 for the
one utterance it is loading, and ``AVSRCollateFn`` narrows the padded batch back to uint8.
"""
import collections.abc
from typing import Iterator

import numpy as np

from espnet_omni_avsr.data.espnet_data_types import register_data_type
from espnet_omni_avsr.data.video_io import VideoScpReader

VIDEO_DATA_TYPE = "video"

_HELP = (
    "Grayscale video read with PyAV (.mp4, .avi, .mkv, .webm), .npy (T, H, W) or a Kaldi ark "
    "(T, H*W) matrix of pixel values; gives (T, H, W) integer frames 0..255."
    "\n\n"
    "   utterance_id_A /some/where/a.mp4\n"
    "   utterance_id_B /some/where/b.npy\n"
    "   utterance_id_C /some/where/video.ark:123\n"
    "   ..."
)


class VideoFramesLoader(collections.abc.Mapping):
    """``utt_id -> (T, H, W) int16`` frames (0..255) for ESPnetDataset; lazy, over a video scp.

    Errors come from :class:`VideoScpReader` and name the utterance and the scp file.
    """

    def __init__(self, scp_path: str):
        self.reader = VideoScpReader(scp_path)

    def __getitem__(self, uid: str) -> np.ndarray:
        # uint8 is refused by ESPnetDataset (see the module docstring): hand out a signed type.
        return self.reader[uid].astype(np.int16)

    def __contains__(self, uid: object) -> bool:
        return uid in self.reader

    def __iter__(self) -> Iterator[str]:
        return iter(self.reader)

    def __len__(self) -> int:
        return len(self.reader)


def video_loader(path: str) -> VideoFramesLoader:
    """The ``DATA_TYPES["video"]["func"]``: build the lazy loader of one scp file."""
    return VideoFramesLoader(path)


def register_video_data_type() -> None:
    """Add the ``video`` entry to ``espnet2.train.dataset.DATA_TYPES``; safe to call repeatedly.

    Raises:
        RuntimeError: ``video`` is already registered with a different loader.
    """
    register_data_type(VIDEO_DATA_TYPE, video_loader, _HELP)
