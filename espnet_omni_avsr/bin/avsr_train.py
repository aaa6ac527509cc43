"""Train an LLM-based ASR / VSR / AVSR model: every ESPnet trainer option works (--resume, --ngpu, ...)."""
from espnet_omni_avsr.tasks.avsr_llm_task import AVSRLLMTask


def get_parser():
    return AVSRLLMTask.get_parser()


def main(cmd=None):
    AVSRLLMTask.main(cmd=cmd)


if __name__ == "__main__":
    main()
