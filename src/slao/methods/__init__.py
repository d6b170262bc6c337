"""Continual-learning methods, one file each, registered by name."""

# Each import registers its method(s) in METHODS.
from slao.methods import corda as _corda  # noqa: F401 - "corda"
from slao.methods import inc_lora as _inc_lora  # noqa: F401 - "inc-lora"
from slao.methods import inflora as _inflora  # noqa: F401 - "inflora"
from slao.methods import knots as _knots  # noqa: F401 - "knots"
from slao.methods import lora_lego as _lora_lego  # noqa: F401 - "lora-lego"
from slao.methods import lorm as _lorm  # noqa: F401 - "lorm-ab", "lorm-ba"
from slao.methods import magmax as _magmax  # noqa: F401 - "magmax"
from slao.methods import mtl as _mtl  # noqa: F401 - "mtl"
from slao.methods import o_lora as _o_lora  # noqa: F401 - "o-lora"
from slao.methods import opcm as _opcm  # noqa: F401 - "opcm"
from slao.methods import per_task_lora as _per_task_lora  # noqa: F401 - "per-task-lora"
from slao.methods import replay as _replay  # noqa: F401 - "replay"
from slao.methods import seq_lora as _seq_lora  # noqa: F401 - "seq-lora"
from slao.methods import slao as _slao  # noqa: F401 - "slao"
from slao.methods.base import METHODS, Method, build_method, get_method, option, register
from slao.methods.lora_ops import LoraWeights

__all__ = ["METHODS", "LoraWeights", "Method", "build_method", "get_method", "option", "register"]
