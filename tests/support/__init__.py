"""Helpers the tests share: tiny models and tokenizers, real-model fixtures, runtimes, CLI processes."""
