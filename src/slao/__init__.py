"""slao: continual learning of language models with one LoRA adapter merged after every task."""

__version__ = "0.1.0"

__all__ = ["ContinualLoRA", "ContinualLoRACallback", "__version__"]


def __getattr__(name):  # the API loads torch and PEFT only when it is used
    if name in ("ContinualLoRA", "ContinualLoRACallback"):
        from slao import api

        return getattr(api, name)
    raise AttributeError(f"module 'slao' has no attribute {name!r}")
