"""Cryptographic primitives (layer 1): the only package that imports ``cryptography``."""
