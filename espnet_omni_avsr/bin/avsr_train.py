"""Train an LLM-based ASR / VSR / AVSR model: every ESPnet trainer option works (--resume, --ngpu, ...).

Several --config files may be given; later ones override earlier ones (utils/config_stack.py).
"""
import sys

from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask
from espnet_omni_avsr.utils.config_stack import stack_configs


def get_parser():
    return AVSRLLMTask.get_parser()


def main(cmd=None):
    AVSRLLMTask.main(cmd=stack_configs(sys.argv[1:] if cmd is None else cmd))


if __name__ == "__main__":
    main()
