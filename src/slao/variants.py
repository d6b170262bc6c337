"""The ``--methods`` grammar of ``slao compare`` and ``slao claims``: a method, or a variant of one with some
of its own settings changed (``slao(init=merged,schedule=inv)``), its run-folder name, and its config."""

from __future__ import annotations

from slao.errors import ConfigError


def split_methods(text: str) -> list[str]:
    """'slao,slao(init=merged,schedule=inv),seq-lora' -> its entries (commas inside parentheses stay)."""
    entries, depth, current = [], 0, ""
    for ch in text or "":
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            entries.append(current.strip())
            current = ""
        else:
            current += ch
    entries.append(current.strip())
    return [e for e in entries if e]


def method_spec(label: str) -> tuple[str, dict]:
    """'slao(init=merged,schedule=0.5)' -> ('slao', {'init': 'merged', 'schedule': '0.5'}); 'slao' -> ('slao', {}).
    A variant is a method with some of its own settings (``method.<name>.<key>``) changed."""
    label = label.strip()
    if "(" not in label:
        return label, {}
    name, _, rest = label.partition("(")
    if not rest.endswith(")"):
        raise ConfigError(f"--methods entry {label!r}: a variant is NAME(key=value,...)")
    settings = {}
    for pair in filter(None, (p.strip() for p in rest[:-1].split(","))):
        key, eq, value = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--methods entry {label!r}: expected key=value, got {pair!r}")
        settings[key.strip()] = value.strip()
    return name.strip(), settings


def variant_config(cfg, label: str):
    """``cfg`` running the method (or variant) ``label``; its settings checked as a config file's are."""
    import yaml

    from slao.config import build_config, to_dict
    from slao.methods.base import section

    name, settings = method_spec(label)
    data = to_dict(cfg)
    data["method"]["name"] = name
    if settings:
        key = section(name)
        if key not in data["method"]:
            raise ConfigError(f"--methods entry {label!r}: method {name!r} has no settings to vary")
        data["method"][key].update({k: yaml.safe_load(v) for k, v in settings.items()})
    try:
        return build_config(data)
    except ConfigError as err:
        raise ConfigError(f"--methods entry {label!r}: {err}") from None


def folder_name(label: str) -> str:
    """A run folder's name for a method or variant: 'slao(init=merged,b_rule=replace)' ->
    'slao+init=merged+b_rule=replace' (no characters a shell must quote)."""
    name, settings = method_spec(label)
    return "+".join([name, *(f"{k}={v}" for k, v in settings.items())])


def label_of(folder: str) -> str:
    """A run folder's name back to its --methods label: 'slao+init=merged' -> 'slao(init=merged)'."""
    name, *settings = folder.split("+")
    return f"{name}({','.join(settings)})" if settings else name


def parse_methods(text: str, cfg=None) -> list[str]:
    """'slao,seq-lora,slao(init=merged)' -> its entries, every name (and, given ``cfg``, every variant's
    settings) checked first."""
    from slao.methods import get_method

    names = split_methods(text)
    if not names:
        raise ConfigError("slao compare needs --methods a,b,... (slao list shows the methods)")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"--methods names {', '.join(dupes)} more than once; give each method once")
    for label in names:
        get_method(method_spec(label)[0])  # raises ConfigError listing the valid names
        if cfg is not None:
            variant_config(cfg, label)
    return names
