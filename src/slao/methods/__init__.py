"""Continual-learning methods, one file each, registered by name."""

from slao.methods import slao as _slao  # noqa: F401 - registers "slao"
from slao.methods.base import METHODS, LoraWeights, Method, get_method, register

__all__ = ["METHODS", "LoraWeights", "Method", "get_method", "register"]
