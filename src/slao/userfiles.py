"""Reading the files a user hands over (data, options, instructions, settings): any failure to read,
decode or parse one becomes one line naming the file, and the line or record where there is one.

Text must be valid UTF-8, and JSON strings must be text too: JSON can spell an unpaired UTF-16 surrogate
(``"\\ud800"``) that no UTF-8 file, tokenizer or hash can hold, so such a string is refused here rather
than failing later, far from its file.
"""

from __future__ import annotations

import json
from pathlib import Path

from slao.errors import DataError, SlaoError


def short(value, limit: int = 100) -> str:
    """``repr(value)`` cut to ``limit`` characters (a message stays one readable line)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def oneline(text: str) -> str:
    """``text`` with its line breaks written as ``\\n`` (a message names a path or value that holds one)."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


def read_text(path: str | Path, error: type[SlaoError] = DataError) -> str:
    """The UTF-8 text of ``path`` without a byte-order mark, line ends made ``\\n`` (as Python reads text)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise error(f"{path}: cannot be read ({err.strerror or err})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise error(f"{path}: line {line}: not UTF-8 text ({err.reason})") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def parse_json(text: str, where: str, *, with_line: bool = True, error: type[SlaoError] = DataError):
    """``json.loads(text)``; a failure names ``where`` (and the line, with ``with_line``)."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        line = f"line {err.lineno}: " if with_line else ""
        raise error(f"{where}: {line}malformed JSON ({err.msg})") from None
    except RecursionError:
        raise error(f"{where}: JSON nested too deeply") from None
    except ValueError as err:  # an integer literal longer than Python converts
        raise error(f"{where}: unreadable JSON value ({err})") from None
    check_strings(data, where, error)
    return data


def read_json(path: str | Path):
    """The JSON content of ``path``."""
    return parse_json(read_text(path), str(path))


def check_strings(data, where: str, error: type[SlaoError] = DataError, limit: int | None = None) -> None:
    """Refuse a string (value or key) anywhere in ``data`` that is not text (an unpaired surrogate), and,
    with ``limit``, a structure of more than ``limit`` values (YAML aliases can make a few bytes stand
    for billions of them). The message names the place, as ``[3]['sentence']``."""
    stack: list[tuple[object, str]] = [(data, "")]
    seen = 0
    while stack:
        value, at = stack.pop()
        seen += 1
        if limit is not None and seen > limit:
            raise error(f"{where}: holds more than {limit} values (nested aliases?)")
        if isinstance(value, str):
            if not _is_text(value):
                place = f" at {at}" if at else ""
                raise error(f"{where}{place}: string holds an unpaired surrogate escape (not text)")
        elif isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and not _is_text(key):
                    raise error(f"{where}: a key holds an unpaired surrogate escape (not text)")
                stack.append((item, f"{at}[{short(key, 40)}]"))
        elif isinstance(value, list | tuple):
            stack.extend((item, f"{at}[{i}]") for i, item in enumerate(value))


def _is_text(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def yaml_problem(err) -> str:
    """A PyYAML error as one line: where (line, column) and what."""
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    if mark is not None and problem:
        return f"line {mark.line + 1}, column {mark.column + 1}: {problem}"
    return " ".join(str(err).split())


MAX_YAML_DEPTH = 100


def flow_depth(text: str) -> int:
    """How deep ``[`` and ``{`` nest in YAML text (outside quoted strings; brackets in a comment or a
    plain scalar count too, so this can only overstate). PyYAML's scanner takes time quadratic in this
    depth (seconds at a few thousand) before its recursion gives out: the text is refused first."""
    depth = deepest = 0
    quote = None
    escaped = False
    for ch in text:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\" and quote == '"':
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth = max(depth - 1, 0)
    return deepest


def read_yaml_file(path: str | Path, error: type[SlaoError], what: str = "", limit: int = 100_000):
    """The content of the YAML file ``path`` (safe_load: plain data only), or ``error`` naming the file
    (``what`` before it, as "config file ") and the line. More than ``limit`` values (aliases that stand
    for billions of them), and strings that are not text, are refused."""
    import yaml

    where = f"{what}{path}"
    text = read_text(path, error)
    if flow_depth(text) > MAX_YAML_DEPTH:
        raise error(f"{where} is not usable YAML: [ and {{ nest more than {MAX_YAML_DEPTH} levels deep")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise error(f"{where} is not valid YAML: {yaml_problem(err)}") from None
    except RecursionError:
        raise error(f"{where} is not usable YAML: nested too deeply") from None
    except ValueError as err:  # an integer literal longer than Python converts
        raise error(f"{where} is not usable YAML: {' '.join(str(err).split())[:120]}") from None
    check_strings(data, where, error, limit=limit)
    return data
