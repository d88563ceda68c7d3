"""The method: encoders and queue, losses and margins, samplers, memory bank, pseudo-labels, k-means.

Imports only torch, torchvision, numpy and the standard library; raises ValueError on bad arguments.
"""
