"""Defaults of the ``probe`` and ``rdx`` tools, in a module the command line imports without torch."""

# linear probe (distillab.probe); features are cached, so many epochs are cheap
PROBE_EPOCHS = 100  # passes over the cached training features
PROBE_LR = 1e-2  # AdamW peak learning rate, cosine-annealed to 0
PROBE_BATCH_SIZE = 256  # mini-batch of cached features (also the embedding batch)
PROBE_WEIGHT_DECAY = 1e-4  # AdamW decoupled weight decay of the linear layer

# RDX explanations (distillab.rdx.explain)
NULL_THRESHOLD = 1.5  # cluster 0 is the null cluster when its mean affinity is below this (RDX MNIST configs)
