# Corpus locations (an environment variable of the same name wins).
# LRS3: the folder holding pretrain/, trainval/ and test/ of the LRS3 release.
LRS3=${LRS3:-downloads/lrs3}
# AV-HuBERT's 1,200-utterance validation list (see local/data.sh for where to get it).
LRS3_VALID_IDS=${LRS3_VALID_IDS:-${LRS3}/lrs3-valid.id}
