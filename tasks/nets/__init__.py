"""Torch building blocks the stages share: networks, losses and optimizers, and how a step runs."""
