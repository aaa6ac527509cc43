"""Mini-batch collation for audio-visual data read by ESPnet's datasets.

``common_collate_fn`` (espnet2.train.collate_fn) pads every array by its dtype kind and adds
``<key>_lengths``. Video needs two things it does not do: frames must stay (or become) uint8 so that
a padded batch of 96x96 video costs 1 byte per pixel (ESPnetDataset hands integer frames out as
int64, 8 bytes, see ``espnet_video_type``), and padding must be black frames (0) whatever the
integer pad value of the token sequences is. So video keys are padded here and everything else
goes through ``common_collate_fn`` unchanged.
"""
from typing import Collection, Dict, List, Sequence, Tuple, Union

import numpy as np
import torch
from espnet2.train.collate_fn import common_collate_fn

Batch = Tuple[List[str], Dict[str, torch.Tensor]]


class AVSRCollateFn:
    """Pads speech, video and token ids of one mini-batch; a drop-in for ESPnet's CommonCollateFn.

    Args:
        float_pad_value: pad value of float arrays (``speech``: 0.0).
        int_pad_value: pad value of integer arrays (``text`` token ids: -1, ESPnet's ignore id).
        video_keys: keys holding (T, H, W) frames; integer frames (0..255) become uint8, float
            frames keep their dtype; padding is 0 in time.
        not_sequence: keys that get no ``<key>_lengths``.

    __call__(data):
        data: [(utt_id, {"speech": (L,) float, "video": (T, H, W) int/uint8, "text": (N,) int}),
        ...] as ESPnetDataset returns them.
        returns (utt_ids, batch): batch["video"] (B, T_max, H, W) uint8, batch["video_lengths"]
        (B,) long, and likewise for every other key.

    Raises:
        ValueError: video frames of different sizes (the message lists utterance ids and sizes),
            a video that is not (T, H, W), or integer frames outside 0..255.
    """

    def __init__(
        self,
        float_pad_value: Union[float, int] = 0.0,
        int_pad_value: int = -1,
        video_keys: Sequence[str] = ("video",),
        not_sequence: Collection[str] = (),
    ):
        if isinstance(video_keys, str):
            raise TypeError(f"video_keys must be a sequence of key names, got the string {video_keys!r}")
        self.float_pad_value = float_pad_value
        self.int_pad_value = int_pad_value
        self.video_keys = tuple(video_keys)
        self.not_sequence = set(not_sequence)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(float_pad_value={self.float_pad_value}, "
            f"int_pad_value={self.int_pad_value}, video_keys={self.video_keys}, "
            f"not_sequence={sorted(self.not_sequence)})"
        )

    def __call__(self, data: Collection[Tuple[str, Dict[str, np.ndarray]]]) -> Batch:
        data = list(data)
        if not data:
            raise ValueError("cannot collate an empty mini-batch")
        uttids = [uid for uid, _ in data]
        first_keys = list(data[0][1])
        video_keys = [key for key in first_keys if key in self.video_keys]
        for uid, item in data:
            missing = [key for key in video_keys if key not in item]
            if missing:
                raise ValueError(f"utterance {uid!r} has no {missing} (utterance {uttids[0]!r} has)")

        videos = {key: self._pad_video(key, uttids, [item[key] for _, item in data]) for key in video_keys}
        others = [(uid, {k: v for k, v in item.items() if k not in video_keys}) for uid, item in data]
        _, batch = common_collate_fn(
            others,
            float_pad_value=self.float_pad_value,
            int_pad_value=self.int_pad_value,
            not_sequence=self.not_sequence,
        )

        output: Dict[str, torch.Tensor] = {}
        for key in first_keys:  # keep the dataset's key order
            if key in videos:
                output[key] = videos[key]
                if key not in self.not_sequence:
                    output[key + "_lengths"] = torch.tensor(
                        [item[key].shape[0] for _, item in data], dtype=torch.long
                    )
            else:
                output[key] = batch[key]
                if key + "_lengths" in batch:
                    output[key + "_lengths"] = batch[key + "_lengths"]
        return uttids, output

    @staticmethod
    def _pad_video(key: str, uttids: List[str], arrays: List[np.ndarray]) -> torch.Tensor:
        """[(T_i, H, W)] -> (B, T_max, H, W), uint8 for integer frames, padded with 0."""
        for uid, array in zip(uttids, arrays):
            if array.ndim != 3:
                raise ValueError(f"{key} of utterance {uid!r} must be (T, H, W), got shape {array.shape}")
        sizes: Dict[Tuple[int, int], List[str]] = {}
        for uid, array in zip(uttids, arrays):
            sizes.setdefault(tuple(array.shape[1:]), []).append(uid)
        if len(sizes) > 1:
            listing = "; ".join(f"{h}x{w}: {', '.join(ids)}" for (h, w), ids in sizes.items())
            raise ValueError(
                f"{key} frames of different sizes cannot share a batch ({listing}); "
                "crop or resize the mouth ROIs to one size in data preparation"
            )

        kinds = {array.dtype.kind for array in arrays}
        if kinds <= {"u", "i"}:
            tensors = []
            for uid, array in zip(uttids, arrays):
                if array.dtype != np.uint8:
                    low, high = int(array.min()), int(array.max())
                    if low < 0 or high > 255:
                        raise ValueError(
                            f"{key} of utterance {uid!r} holds values in [{low}, {high}], "
                            "not pixel values 0..255"
                        )
                    array = array.astype(np.uint8)
                tensors.append(torch.from_numpy(array))
        elif kinds == {"f"}:
            tensors = [torch.from_numpy(array) for array in arrays]
        else:
            dtypes = sorted({str(array.dtype) for array in arrays})
            raise ValueError(f"{key} frames must be all integer or all float, got {dtypes}")

        height, width = tensors[0].shape[1:]
        padded = tensors[0].new_zeros((len(tensors), max(t.shape[0] for t in tensors), height, width))
        for i, tensor in enumerate(tensors):
            padded[i, : tensor.shape[0]] = tensor
        return padded
