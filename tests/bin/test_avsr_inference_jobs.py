"""The jobs file that `python -m espnet_omni_avsr.names decode-jobs` writes is what avsr_inference reads."""
import pytest

from espnet_omni_avsr.bin.avsr_inference import read_jobs
from espnet_omni_avsr.names import decode_jobs


def test_decode_jobs_read_back(tmp_path):
    conds = [dict(task="vsr", label="vsr_v2", rates={"video": 2}),
             dict(task="avsr", label="avsr_a4v2", rates={"audio": 4, "video": 2})]
    rows = decode_jobs(conds, ["test"], [-5], "dump", "exp/m", "greedy")
    path = tmp_path / "jobs.tsv"
    path.write_text("".join("\t".join(r) + "\n" for r in rows))
    jobs = read_jobs(str(path))
    assert [(t, str(out), rates) for t, _, out, rates in jobs] == [
        ("vsr", "exp/m/decode_greedy/test/vsr_v2/snr_clean", {"video": 2}),
        ("avsr", "exp/m/decode_greedy/test/avsr_a4v2/snr_clean", {"audio": 4, "video": 2}),
        ("avsr", "exp/m/decode_greedy/test/avsr_a4v2/snr_-5", {"audio": 4, "video": 2}),
    ]
    assert jobs[0][1] == [("dump/test/video.scp", "video", "video")]
    assert jobs[2][1] == [("dump/test_snr-5/wav.scp", "speech", "audio16k"),
                          ("dump/test_snr-5/video.scp", "video", "video")]


def test_bad_jobs_lines_name_the_line(tmp_path):
    path = tmp_path / "jobs.tsv"
    path.write_text("asr\tdump/test\tout\tq3\t-\n")
    with pytest.raises(ValueError, match=r"jobs.tsv:1: rates must be integers"):
        read_jobs(str(path))
    path.write_text("asr\tdump/test\tout\t4\n")
    with pytest.raises(ValueError, match=r"jobs.tsv:1: expected 'task<TAB>data_dir<TAB>output_dir"):
        read_jobs(str(path))


def test_a_hypothesis_is_one_line_whatever_the_llm_wrote():
    from espnet_omni_avsr.bin.avsr_inference import hypothesis_line

    assert hypothesis_line("u1", "set green at p six\nset green  at p six\n") == "u1 set green at p six set green at p six\n"
    assert hypothesis_line("u2", "") == "u2 \n"


def test_a_decoding_older_than_the_model_is_not_complete(tmp_path):
    import os

    from espnet_omni_avsr.bin.avsr_inference import _complete

    (tmp_path / "wav.scp").write_text("u1 a.wav\nu2 b.wav\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "text").write_text("u1 hello\nu2 world\n")
    (out / "llm_tokens").write_text("u1 10\nu2 12\n")
    triples = [(str(tmp_path / "wav.scp"), "speech", "sound")]
    model = tmp_path / "2epoch.pth"
    model.write_bytes(b"weights")
    link = tmp_path / "model.pth"
    link.symlink_to(model)
    t = (out / "text").stat().st_mtime
    os.utime(model, (t - 60, t - 60))
    assert _complete(out, triples) and _complete(out, triples, str(link))
    os.utime(model, (t + 60, t + 60))  # the model was trained on after this decoding
    assert _complete(out, triples) and not _complete(out, triples, str(link))
    (out / "text").write_text("u1 hello\n")
    assert not _complete(out, triples)  # a hypothesis missing
