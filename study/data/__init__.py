"""Data: dataset formats, batched augmentations, in-memory and streamed sources, batch order."""
