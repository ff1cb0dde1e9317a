"""The bottom layer: what the engine and the loss terms share, importing neither.

``contract``: the types the engine hands to loss terms (batches, model outputs, setup and epoch contexts).
``dist``: process-group facts and the few collectives used by the engine and by stateful terms.
``files``: atomic file writes and careful checkpoint reads.
"""
