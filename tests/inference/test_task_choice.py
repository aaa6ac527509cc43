"""The task rule: from the streams an input has, among the tasks the model was trained for."""
import pytest

from espnet_omni_avsr.inference.transcriber import choose_task
from espnet_omni_avsr.prep.errors import ItemError

ALL = ["avsr", "asr", "vsr"]
NO_FACE = {"video": "no face found in any of the 25 frames of x.mp4"}
SILENT = {"audio": "x.mp4 has no audio stream"}


def test_the_streams_there_decide():
    assert choose_task(["audio", "video"], ALL) == ("avsr", [])
    assert choose_task(["audio"], ALL, missing=NO_FACE) == ("asr", [])
    assert choose_task(["video"], ALL, missing=SILENT) == ("vsr", [])


def test_an_untrained_preferred_task_falls_back_with_a_warning():
    task, warnings = choose_task(["audio", "video"], ["asr"])
    assert task == "asr" and "not trained for avsr" in warnings[0] and "video ignored" in warnings[0]
    task, warnings = choose_task(["audio", "video"], ["vsr", "asr"])  # ties: the model's task order
    assert task == "vsr" and "audio ignored" in warnings[0]
    with pytest.raises(ItemError, match=r"the model's tasks \(avsr\) need audio or video: no face found"):
        choose_task(["audio"], ["avsr"], missing=NO_FACE)
    with pytest.raises(ItemError, match=r"need audio: x.mp4 has no audio stream"):
        choose_task(["video"], ["asr"], missing=SILENT)


def test_a_forced_task_needs_its_streams():
    assert choose_task(["audio", "video"], ALL, forced="asr") == ("asr", [])
    with pytest.raises(ItemError, match=r"--task avsr needs video: no face found"):
        choose_task(["audio"], ALL, forced="avsr", missing=NO_FACE)
    with pytest.raises(ItemError, match=r"--task vsr needs video: no video"):
        choose_task(["audio"], ALL, forced="vsr")
