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

from slao.config import LoraSettings
from slao.errors import SlaoError
from slao.methods.lora_ops import LoraWeights
from slao.tensorfile import FLOAT_DTYPES, load_tensors, non_finite, read_header, short
from slao.userfiles import parse_json, read_text

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
    """An adapter folder that cannot be used (missing, truncated or inconsistent files, another base model);
    the message names the file and the field at fault."""


_ADAPTER_KEY = re.compile(r"^base_model\.model\.(?P<layer>.+)\.lora_(?P<ab>[AB])\.weight$")


def load_adapter_weights(folder: str | Path, expected_base: str,
                         shapes: dict[str, tuple[int, int]] | None = None) -> tuple[dict, LoraWeights]:
    """Read a PEFT LoRA folder (adapter_config.json + adapter_model.safetensors; nothing else is read).

    Checked field by field before any weight is used: the config (a LoRA, made for ``expected_base``, a
    positive integer rank ``r``, a finite positive ``lora_alpha``, ``target_modules`` a list of names or a
    pattern that covers every layer of the weights, plain LoRA: no DoRA, rsLoRA or per-layer ranks); the
    weight file's header (its size bounded, then every tensor a lora_A (r, in) / lora_B (out, r) pair of
    a floating dtype); with ``shapes`` (each layer's (out, in) in the model) that the layers are the
    model's; and, once read, that no weight is NaN or infinite. Returns (adapter config, weights).
    """
    folder = Path(folder)
    config_file, weights_file = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_file.is_file():
        raise AdapterError(f"{folder} is not an adapter folder: {config_file.name} is missing")
    if not weights_file.is_file():
        extra = " (a .bin adapter is never read: it can run code; convert it to safetensors)" \
            if (folder / "adapter_model.bin").exists() else ""
        raise AdapterError(f"adapter folder {folder} has no {weights_file.name}{extra}")
    config = parse_json(read_text(config_file, AdapterError), str(config_file), error=AdapterError)
    _check_adapter_config(config_file, config, expected_base)
    rank = config["r"]
    header = read_header(weights_file, AdapterError)
    parts: dict[str, dict[str, str]] = {}
    for key, entry in header.items():
        match = _ADAPTER_KEY.match(key)
        if match is None:
            raise AdapterError(f"{weights_file}: tensor {short(key)} is not a LoRA A or B weight")
        if entry["dtype"] not in FLOAT_DTYPES:
            raise AdapterError(f"{weights_file}: tensor {short(key)}: dtype {entry['dtype']} is not floating "
                               f"({', '.join(FLOAT_DTYPES)})")
        parts.setdefault(match["layer"], {})[match["ab"]] = key
    if not parts:
        raise AdapterError(f"{weights_file} holds no LoRA weights")
    for layer, ab in sorted(parts.items()):
        where = f"{weights_file}: layer {short(layer)}"
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{where}: lora_{'B' if 'A' in ab else 'A'} is missing")
        (r_a, n_in), (n_out, r_b) = _pair(where, header[ab["A"]]["shape"], header[ab["B"]]["shape"])
        if r_a != rank or r_b != rank:
            raise AdapterError(f"{where}: rank {r_a if r_a != rank else r_b} in the weights, but field 'r' of "
                               f"{config_file.name} says {rank}")
        if not _targeted(layer, config["target_modules"]):
            raise AdapterError(f"{where}: not matched by field 'target_modules' "
                               f"{short(config['target_modules'])} of {config_file.name}")
        if shapes is not None and layer in shapes and (n_out, n_in) != tuple(shapes[layer]):
            raise AdapterError(f"adapter {folder} does not fit the model: layer {layer} is ({n_out}, {n_in}) in "
                               f"{weights_file.name}, ({shapes[layer][0]}, {shapes[layer][1]}) in the model")
    if shapes is not None:
        wrong = sorted(set(shapes) ^ set(parts))
        if wrong:
            raise AdapterError(f"adapter {folder} does not fit the model: layers {wrong[:3]} are missing or extra")
    tensors = load_tensors(weights_file, AdapterError)
    weights: LoraWeights = {}
    for layer, ab in sorted(parts.items()):
        A, B = tensors[ab["A"]], tensors[ab["B"]]
        for name, tensor in (("lora_A", A), ("lora_B", B)):
            if non_finite(tensor):
                raise AdapterError(f"{weights_file}: layer {short(layer)}: {name} holds NaN or infinite values")
        weights[layer] = (A, B)
    return config, weights


def _check_adapter_config(path: Path, config, expected_base: str) -> None:
    """Every field of adapter_config.json that the weights are read by."""
    if not isinstance(config, dict) or config.get("peft_type") != "LORA":
        raise AdapterError(f"{path} does not describe a LoRA adapter (field 'peft_type' must be LORA)")
    base = config.get("base_model_name_or_path")
    if base != expected_base:
        raise AdapterError(f"adapter {path.parent} was trained on base model {short(base)}, not on "
                           f"{expected_base!r}; refusing to load it. Give the model it was made for (--model).")
    r = config.get("r")
    if type(r) is not int or r < 1:
        raise AdapterError(f"{path}: field 'r' (the LoRA rank) must be a positive integer, got {short(r)}")
    alpha = config.get("lora_alpha")
    if type(alpha) not in (int, float) or not math.isfinite(alpha) or alpha <= 0:
        raise AdapterError(f"{path}: field 'lora_alpha' must be a finite number > 0, got {short(alpha)}")
    targets = config.get("target_modules")
    if isinstance(targets, str):
        try:
            re.compile(targets)
        except re.error as err:
            raise AdapterError(f"{path}: field 'target_modules' is not a valid pattern ({err})") from None
    elif not (isinstance(targets, list) and targets and all(isinstance(t, str) and t for t in targets)):
        raise AdapterError(f"{path}: field 'target_modules' must be a list of module names or a pattern, "
                           f"got {short(targets)}")
    for field, what in (("use_dora", "DoRA"), ("use_rslora", "rsLoRA's scale alpha / sqrt(r)")):
        if config.get(field) not in (None, False):
            raise AdapterError(f"{path}: field {field!r} is {short(config[field])}: {what} is not read, only "
                               "plain LoRA (scale alpha / r)")
    for field in ("rank_pattern", "alpha_pattern"):
        if config.get(field) not in (None, {}):
            raise AdapterError(f"{path}: field {field!r} is {short(config[field])}: per-layer ranks and alphas "
                               "are not read, only one r and lora_alpha for every layer")


def _pair(where: str, a_shape: list[int], b_shape: list[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    if len(a_shape) != 2 or len(b_shape) != 2:
        raise AdapterError(f"{where}: lora_A {a_shape} and lora_B {b_shape} must be matrices (r, in) and (out, r)")
    return (a_shape[0], a_shape[1]), (b_shape[0], b_shape[1])


def _targeted(layer: str, targets: str | list[str]) -> bool:
    """Whether PEFT's ``target_modules`` picks ``layer``: a string is a pattern the whole name must match
    (or "all-linear"), a list names modules by their last name parts."""
    if isinstance(targets, str):
        return targets == "all-linear" or re.fullmatch(targets, layer) is not None
    return any(layer == t or layer.endswith("." + t) for t in targets)
