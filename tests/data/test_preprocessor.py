import numpy as np
import pytest
import torch

from espnet_omni_avsr.data.preprocessor import AVSRPreprocessor


@pytest.fixture(scope="module")
def pre(tiny_llm_dir):
    return AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, max_av_offset=0.2)


def test_tokenizes_lower_case_without_special_tokens(pre):
    out = pre("u1", {"text": "BIN  BLUE AT F"})
    assert out["text"].dtype == np.int64
    assert pre.tokenizer.decode(out["text"]) == "bin blue at f"
    assert pre.tokenizer.bos_token_id not in out["text"].tolist()


def test_empty_transcript_names_the_utterance(pre):
    with pytest.raises(ValueError, match="utterance u2: empty transcript"):
        pre("u2", {"text": "   "})


def test_audio_video_duration_mismatch(pre):
    data = {"speech": np.zeros(16000, np.float32), "video": np.zeros((50, 96, 96), np.uint8), "text": "a"}
    with pytest.raises(ValueError, match=r"utterance u3: audio lasts 1.00 s but video 2.00 s"):
        pre("u3", data)
    data["video"] = np.zeros((27, 96, 96), np.uint8)  # 1.08 s: within 0.2 s
    assert pre("u3", data)["speech"].dtype == np.float32


def test_stereo_audio_and_bad_video_shapes(pre):
    with pytest.raises(ValueError, match="utterance u4: audio must be mono"):
        pre("u4", {"speech": np.zeros((100, 2), np.float32)})
    with pytest.raises(ValueError, match=r"utterance u5: video must be \(frames, height, width\)"):
        pre("u5", {"video": np.zeros((0, 96, 96), np.uint8)})


@pytest.fixture
def noise_wav(tmp_path):
    import soundfile as sf

    path = tmp_path / "babble.wav"
    sf.write(path, np.random.default_rng(1).standard_normal(32000).astype(np.float32) * 0.1, 16000)
    return str(path)


def test_training_noise_at_the_drawn_snr(tiny_llm_dir, noise_wav):
    pre = AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=[0], noise_seed=3)
    clean = 0.1 * np.sin(np.arange(16000) / 5.0).astype(np.float32)  # quiet: no peak rescaling
    noisy = pre("u6", {"speech": clean.copy()})["speech"]
    snr = 10 * np.log10(np.mean(clean.astype(np.float64) ** 2) / np.mean((noisy - clean).astype(np.float64) ** 2))
    assert noisy.dtype == np.float32 and abs(snr) < 0.1


def test_clean_entries_and_validation_loader_stay_clean(tiny_llm_dir, noise_wav):
    clean = np.sin(np.arange(8000) / 5.0).astype(np.float32)
    always_clean = AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=["clean", None])
    assert np.array_equal(always_clean("u7", {"speech": clean.copy()})["speech"], clean)
    valid = AVSRPreprocessor(train=False, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=[0])
    assert np.array_equal(valid("u7", {"speech": clean.copy()})["speech"], clean)


def test_bad_noise_snr_entry(tiny_llm_dir, noise_wav):
    with pytest.raises(ValueError, match="noise_snrs: 'loud'"):
        AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=["loud"])


# --------------------------------------------------------------------------- seeded training noise

def _speech(n=4000):
    return (0.1 * np.sin(np.arange(n) / 5.0)).astype(np.float32)


def _noisy(pre, uid, epoch=None):
    if epoch is not None:
        pre.set_epoch(epoch)
    return pre(uid, {"speech": _speech()})["speech"]


def test_training_noise_is_seeded_by_utterance_and_epoch(tiny_llm_dir, noise_wav):
    def make(**kw):
        return AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=[0, 5, 10], **kw)

    run1, run2 = make(), make()  # two runs with the default seed
    assert run1.noise_seed == 0
    uids = [f"u{i}" for i in range(6)]
    first = {u: _noisy(run1, u, epoch=1) for u in uids}
    # another run reads them in another order, after other utterances: the same noise
    _noisy(run2, "other", epoch=1)
    again = {u: _noisy(run2, u, epoch=1) for u in reversed(uids)}
    assert all(np.array_equal(first[u], again[u]) for u in uids)
    assert not np.array_equal(first["u0"], _speech())
    # another epoch, another utterance or another seed: other noise
    assert not any(np.array_equal(first[u], _noisy(run1, u, epoch=2)) for u in uids)
    assert not np.array_equal(first["u0"], first["u1"] * 1.0)
    seeded5 = make(noise_seed=5)
    assert not any(np.array_equal(first[u], _noisy(seeded5, u, epoch=1)) for u in uids)
    # noise_seed null: fresh noise in every run, as before
    fresh1, fresh2 = make(noise_seed=None), make(noise_seed=None)
    assert not np.array_equal(_noisy(fresh1, "u0", epoch=1), _noisy(fresh2, "u0", epoch=1))


def test_seeded_noise_keeps_the_draw_distribution(tiny_llm_dir, noise_wav):
    """Seeding changes which utterance gets which noise, not how often: with noise_prob 0.5 and
    SNRs {0, clean}, a quarter of the utterances are noisy, independently per epoch."""
    pre = AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=[0, "clean"],
                           noise_prob=0.5)
    clean = _speech(400)
    noisy = {}
    for epoch in (1, 2):
        pre.set_epoch(epoch)
        noisy[epoch] = np.array([not np.array_equal(pre(f"u{i}", {"speech": clean.copy()})["speech"], clean)
                                 for i in range(2000)])
    for flags in noisy.values():
        assert abs(flags.mean() - 0.25) < 0.04  # 4 standard deviations of 2000 draws
    both = (noisy[1] & noisy[2]).mean()
    assert abs(both - 0.25 ** 2) < 0.02  # epochs draw independently


class _Set(torch.utils.data.Dataset):
    """A dataset as ESPnet's: `preprocess(uid, data)` in __getitem__ (in the DataLoader workers)."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __getitem__(self, uid):
        return uid, self.preprocess(uid, {"speech": _speech()})["speech"]


def _items(batch):
    return batch


def test_noise_is_the_same_whatever_dataloader_worker_reads_it(tiny_llm_dir, noise_wav):
    """The task's training iterator factory sets the epoch before the workers start; the noise of
    an utterance does not depend on the number of workers nor on which one reads it."""
    from espnet2.iterators.sequence_iter_factory import SequenceIterFactory

    from espnet_omni_avsr.data.preprocessor import EpochAwareIterFactory

    batches = [[f"u{i}", f"u{i + 1}"] for i in range(0, 8, 2)]

    def read(num_workers, epoch):
        pre = AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=[0, 5])
        factory = EpochAwareIterFactory(SequenceIterFactory(
            dataset=_Set(pre), batches=batches, num_workers=num_workers, collate_fn=_items, shuffle=True))
        return {uid: x for batch in factory.build_iter(epoch) for uid, x in batch}

    in_process, workers = read(0, epoch=3), read(2, epoch=3)
    assert sorted(in_process) == sorted(workers) == sorted(u for b in batches for u in b)
    assert all(np.array_equal(in_process[u], workers[u]) for u in in_process)
    other_epoch = read(2, epoch=4)
    assert not any(np.array_equal(in_process[u], other_epoch[u]) for u in in_process)


def test_the_task_gives_the_training_preprocessor_the_epoch(tmp_path, tiny_llm_dir, noise_wav):
    """Through the task's own iterator factory, as the trainer builds it: epoch e's batches carry
    the noise of epoch e (and validation stays clean)."""
    import soundfile as sf
    from espnet2.train.distributed_utils import DistributedOption

    from espnet_omni_avsr.data.preprocessor import EpochAwareIterFactory
    from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask

    uids = [f"u{i}" for i in range(4)]
    with open(tmp_path / "wav.scp", "w") as scp, open(tmp_path / "text", "w") as text, \
            open(tmp_path / "speech_shape", "w") as shape:
        for u in uids:
            sf.write(tmp_path / f"{u}.wav", _speech(), 16000, subtype="FLOAT")
            scp.write(f"{u} {tmp_path / u}.wav\n")
            text.write(f"{u} BIN BLUE\n")
            shape.write(f"{u} {len(_speech())}\n")
    data = [f"{tmp_path}/wav.scp,speech,sound", f"{tmp_path}/text,text,text"]
    argv = ["--decoder_conf", f"{{model_dir: {tiny_llm_dir}}}", "--batch_type", "sorted", "--batch_size", "2",
            "--num_workers", "1",
            "--preprocessor_conf", f"{{noise: {noise_wav}, noise_snrs: [0]}}"]
    for prefix in ("train", "valid"):
        argv += [f"--{prefix}_shape_file", str(tmp_path / "speech_shape")]
        for d in data:
            argv += [f"--{prefix}_data_path_and_name_and_type", d]
    args = AVSRLLMTask.get_parser().parse_args(argv)
    factory = AVSRLLMTask.build_iter_factory(args, DistributedOption(), "train")
    assert isinstance(factory, EpochAwareIterFactory) and len(factory.preprocessors) == 1
    ref = AVSRPreprocessor(train=True, tokenizer_dir=tiny_llm_dir, noise=noise_wav, noise_snrs=[0])
    got = {}
    for epoch in (2, 3):
        ref.epoch = epoch
        for keys, batch in factory.build_iter(epoch):
            for b, uid in enumerate(keys):
                got[epoch, uid] = batch["speech"][b, : int(batch["speech_lengths"][b])].numpy()
                assert np.allclose(got[epoch, uid], ref(uid, {"speech": _speech()})["speech"]), (uid, epoch)
        assert factory.preprocessors[0].epoch == epoch
    assert len(got) == 2 * len(uids)
    assert not any(np.allclose(got[2, u], got[3, u]) for u in uids)
    valid = AVSRLLMTask.build_iter_factory(args, DistributedOption(), "valid")
    for keys, batch in valid.build_iter(1):
        assert np.allclose(batch["speech"][0].numpy(), _speech(), atol=1e-4)
