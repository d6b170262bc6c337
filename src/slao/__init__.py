"""slao: continual learning of language models with one LoRA adapter merged after every task."""

__version__ = "0.1.0"
