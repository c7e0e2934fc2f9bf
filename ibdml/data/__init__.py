"""Datasets, transforms and the class-balanced sampler."""
