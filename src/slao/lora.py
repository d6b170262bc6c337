"""The one place that touches PEFT: attach a LoRA, read and write its A and B, resize it, export it.

Only PEFT's public API is used. Layer names are module paths inside the base model
(``model.layers.0.self_attn.q_proj``); weights travel as ``LoraWeights`` (name -> (A (r, in), B (out, r))).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors import SafetensorError
from safetensors.torch import load_file

from slao.config import LoraSettings
from slao.errors import SlaoError
from slao.methods.lora_ops import LoraWeights

ADAPTER = "default"
_PREFIX = "base_model.model."


class LoraAdapter:
    """A PEFT LoRA on a base model whose scale ``s = alpha / r`` stays fixed when the rank changes
    (a LoRA of rank k*r that stacks k LoRAs then computes exactly their sum)."""

    adapter_name = ADAPTER
    #: False for a user's own PeftModel (``attach``): its rank is theirs, and is never changed here.
    resizable = True

    def __init__(self, base_model: torch.nn.Module, settings: LoraSettings):
        self.settings = settings
        self.scaling = settings.alpha / settings.r
        self.rank = settings.r
        self.model: PeftModel = get_peft_model(base_model, self._peft_config(settings.r))

    @classmethod
    def attach(cls, model: PeftModel, adapter_name: str = ADAPTER) -> LoraAdapter:
        """Read and write the LoRA of a user's own ``PeftModel`` (its adapter ``adapter_name``)."""
        config = getattr(model, "peft_config", {}).get(adapter_name)
        if config is None or not isinstance(config, LoraConfig):
            raise SlaoError(f"the model has no LoRA adapter named {adapter_name!r}; wrap it with "
                            "peft.get_peft_model(model, LoraConfig(...)) first")
        self = cls.__new__(cls)
        self.model, self.adapter_name, self.resizable = model, adapter_name, False
        targets = config.target_modules
        self.settings = LoraSettings(r=config.r, alpha=float(config.lora_alpha), dropout=config.lora_dropout,
                                     target_modules=[targets] if isinstance(targets, str) else sorted(targets or []))
        self.rank = config.r
        self.scaling = config.lora_alpha / config.r
        if not self._layers():
            raise SlaoError(f"adapter {adapter_name!r} has no LoRA layers")
        return self

    def _peft_config(self, rank: int) -> LoraConfig:
        return LoraConfig(
            r=rank,
            lora_alpha=self.scaling * rank,
            lora_dropout=self.settings.dropout,
            target_modules=list(self.settings.target_modules),
            bias="none",
            task_type="CAUSAL_LM",
        )

    # -- layers ---------------------------------------------------------------------------------
    def _layers(self) -> dict[str, LoraLayer]:
        layers = {}
        for name, module in self.model.named_modules():
            if isinstance(module, LoraLayer) and self.adapter_name in module.lora_A:
                layers[name.removeprefix(_PREFIX)] = module
        return layers

    def base_layers(self) -> dict[str, torch.nn.Linear]:
        """Each target layer's frozen base linear (whose input is the LoRA's input)."""
        return {name: layer.get_base_layer() for name, layer in self._layers().items()}

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Each target layer's (out, in)."""
        out = {}
        for name, layer in self._layers().items():
            base = layer.get_base_layer()
            out[name] = (base.out_features, base.in_features)
        return out

    def params(self) -> dict[str, tuple[torch.nn.Parameter, torch.nn.Parameter]]:
        """The live A and B parameters of every layer (for the optimiser and extra losses)."""
        return {
            name: (layer.lora_A[self.adapter_name].weight, layer.lora_B[self.adapter_name].weight)
            for name, layer in self._layers().items()
        }

    # -- weights --------------------------------------------------------------------------------
    def get(self) -> LoraWeights:
        return {n: (A.detach().clone(), B.detach().clone()) for n, (A, B) in self.params().items()}

    def set(self, weights: LoraWeights) -> None:
        rank = next(iter(weights.values()))[0].shape[0]
        if rank != self.rank:
            if not self.resizable:
                raise SlaoError(f"this method needs a LoRA of rank {rank}, and the model's adapter has rank "
                                f"{self.rank}, which slao does not change in a model it was handed")
            self.resize(rank)
        params = self.params()
        missing = set(params) - set(weights)
        if missing:
            raise ValueError(f"no LoRA weights for layers {sorted(missing)[:3]}")
        with torch.no_grad():
            for name, (A, B) in params.items():
                A.copy_(weights[name][0])
                B.copy_(weights[name][1])

    @contextlib.contextmanager
    def using(self, weights: LoraWeights | None):
        """Hold ``weights`` inside the block and put back what was there after it (None: change nothing)."""
        if weights is None:
            yield
            return
        before = self.get()
        self.set(weights)
        try:
            yield
        finally:
            self.set(before)

    def default_init(self, generator: torch.Generator, rank: int | None = None) -> LoraWeights:
        """PEFT's default init (Kaiming-uniform A with a = sqrt(5), zero B), from a seeded generator."""
        rank = rank or self.settings.r
        out = {}
        for name, (n_out, n_in) in self.shapes().items():
            A = torch.empty(rank, n_in)
            torch.nn.init.kaiming_uniform_(A, a=math.sqrt(5), generator=generator)
            out[name] = (A, torch.zeros(n_out, rank))
        return out

    def resize(self, rank: int) -> None:
        """Replace the LoRA by one of another rank (weights are set by the caller)."""
        base = self.model.unload()
        self.model = get_peft_model(base, self._peft_config(rank))
        self.rank = rank

    def set_trainable(self, train_a: bool, train_b: bool) -> list[torch.nn.Parameter]:
        """Freeze everything but the chosen LoRA factors; return the trainable parameters."""
        trainable = []
        for p in self.model.parameters():
            p.requires_grad_(False)
        for A, B in self.params().values():
            A.requires_grad_(train_a)
            B.requires_grad_(train_b)
            trainable += [p for p, on in ((A, train_a), (B, train_b)) if on]
        return trainable

    # -- export ---------------------------------------------------------------------------------
    def export(self, weights: LoraWeights, out_dir: Path, base_model: str) -> None:
        """Write ``weights`` as a PEFT adapter folder that ``PeftModel.from_pretrained`` loads.

        Written into a temporary sibling and renamed into place, so a kill leaves no half adapter.
        """
        with self.using(weights):
            self._save(out_dir, base_model)

    def _save(self, out_dir: Path, base_model: str) -> None:
        out_dir = Path(out_dir)
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".adapter-", dir=out_dir.parent))
        try:
            self.model.peft_config[self.adapter_name].base_model_name_or_path = base_model
            self.model.save_pretrained(str(tmp), safe_serialization=True, save_embedding_layers=False)
            _check_adapter_files(tmp)
            if out_dir.exists():
                old = out_dir.with_name(out_dir.name + ".old")
                shutil.rmtree(old, ignore_errors=True)
                os.replace(out_dir, old)
                os.replace(tmp, out_dir)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _check_adapter_files(folder: Path) -> None:
    config = json.loads((folder / "adapter_config.json").read_text())
    if not (folder / "adapter_model.safetensors").exists() or "r" not in config:
        raise RuntimeError(f"PEFT did not write a complete adapter into {folder}")


# -- reading an adapter folder from a user ------------------------------------------------------------
class AdapterError(SlaoError):
    """An adapter folder that cannot be used (missing or truncated files, another base model)."""


_ADAPTER_KEY = re.compile(r"^base_model\.model\.(?P<layer>.+)\.lora_(?P<ab>[AB])\.weight$")


def load_adapter_weights(folder: str | Path, expected_base: str,
                         shapes: dict[str, tuple[int, int]] | None = None) -> tuple[dict, LoraWeights]:
    """Read a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors; nothing else is read).

    Refuses, with the file and the fix, a missing file, a truncated or non-safetensors weight file, a
    non-LoRA adapter, one made for a base model other than ``expected_base``, and (with ``shapes``, each
    layer's (out, in)) one whose layers do not fit the model. Returns (adapter config, weights).
    """
    folder = Path(folder)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file():
        raise AdapterError(f"{folder} is not an adapter folder: {config_file.name} is missing")
    if not weights_file.is_file():
        extra = " (a .bin adapter is never read: it can run code; convert it to safetensors)" \
            if (folder / "adapter_model.bin").exists() else ""
        raise AdapterError(f"adapter folder {folder} has no {weights_file.name}{extra}")
    try:
        config = json.loads(config_file.read_text())
    except (OSError, ValueError) as err:
        raise AdapterError(f"{config_file} is not valid JSON ({err})") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"{config_file} does not describe a LoRA adapter (peft_type must be LORA)")
    base = config.get("base_model_name_or_path")
    if base != expected_base:
        raise AdapterError(f"adapter {folder} was trained on base model {base!r}, not on {expected_base!r}; "
                           "refusing to load it. Give the model it was made for (--model).")
    try:
        tensors = load_file(str(weights_file))
    except (SafetensorError, OSError) as err:
        raise AdapterError(f"{weights_file} is truncated or not a safetensors file ({err})") from None
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        match = _ADAPTER_KEY.match(key)
        if match is None:
            raise AdapterError(f"{weights_file} holds {key!r}, which is not a LoRA A or B weight")
        parts.setdefault(match["layer"], {})[match["ab"]] = value
    weights: LoraWeights = {}
    for layer, ab in parts.items():
        A, B = ab.get("A"), ab.get("B")
        if A is None or B is None or A.dim() != 2 or B.dim() != 2 or A.shape[0] != B.shape[1]:
            raise AdapterError(f"{weights_file}: layer {layer} lacks a matching lora_A (r, in) / lora_B (out, r)")
        weights[layer] = (A, B)
    if not weights:
        raise AdapterError(f"{weights_file} holds no LoRA weights")
    if shapes is not None:
        wrong = sorted(set(shapes) ^ set(weights)) or [
            n for n, (A, B) in weights.items() if (B.shape[0], A.shape[1]) != tuple(shapes[n])]
        if wrong:
            raise AdapterError(f"adapter {folder} does not fit the model: layers {wrong[:3]} are missing, "
                               "extra or of another shape")
    return config, weights
