# Corpus locations (an environment variable of the same name wins).
# LRS2: the mvlrs_v1 folder holding main/, pretrain/ and train.txt, val.txt, test.txt, pretrain.txt.
LRS2=${LRS2:-downloads/lrs2}
