"""Components from config nodes: find what `_target_` names, check the node against its signature, build it.

Why this way: a node's keys are checked against the target's parameters (unknown key, missing parameter, wrong
type: one line naming the key) before anything runs, so a typo is seen even when no component is ever built (a
fully cached run). Building is `hydra.utils.instantiate(node, _partial_=True)` called with the run's objects:
they arrive as they are (a `ModelSpec` stays a `ModelSpec`; Hydra's `_convert_` would turn it into a dict), and
an error raised inside the component's own code is not a config error: it propagates with its traceback.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Iterable

from hydra.utils import get_method
from omegaconf import DictConfig, OmegaConf

from eatlab.errors import ConfigError


def locate(cfg, key: str, example: str):
    """The object named by `<key>` (e.g. `backend._target_`), imported; ConfigError naming the key otherwise."""
    target = OmegaConf.select(cfg, key, default=None) if isinstance(cfg, DictConfig) else _dotted(cfg, key)
    return _import(target, key, example)


def _import(target, key: str, example: str):
    if not target:
        raise ConfigError(f"{key}: required (e.g. {example})")
    try:
        return get_method(str(target))
    except Exception as exc:  # noqa: BLE001 - Hydra wraps import errors in several types
        cause = exc.__cause__ or exc
        why = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{key}={target}: cannot import ({why})") from None


def _dotted(d, key: str):
    for part in key.split("."):
        d = d.get(part) if isinstance(d, dict) else None
    return d


def require_subclass(obj, base: type, key: str, target) -> type:
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConfigError(f"{key}={target}: not a subclass of {base.__module__}.{base.__qualname__}")
    return obj


def _name(target) -> str:
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', target)}"


def _parameters(target) -> tuple[dict, bool] | None:
    """(named parameters, takes any keyword). A class whose `__init__` passes `**kwargs` on to its parent's
    (a subclass of a shipped backend) accepts the parent's parameters too, and only those."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return None
    named = {n: p for n, p in sig.parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    open_kwargs = any(p.kind is p.VAR_KEYWORD for p in sig.parameters.values())
    if open_kwargs and isinstance(target, type):
        for parent in target.__mro__[1:]:
            if "__init__" not in parent.__dict__ or parent is object:
                continue
            found = _parameters(parent)
            if found is None:
                break
            for n, p in found[0].items():
                named.setdefault(n, p.replace(default=None) if p.default is p.empty else p)
            open_kwargs = found[1]
            if not open_kwargs:
                break
    return named, open_kwargs


def _type_hints(target) -> dict:
    """The annotations of the target's parameters (a class: its own and its parents' `__init__`), evaluated;
    one that cannot be evaluated (a name imported only for type checkers) leaves that function's unchecked."""
    fns = (
        [
            c.__dict__["__init__"]
            for c in reversed(target.__mro__)
            if "__init__" in c.__dict__ and c is not object
        ]
        if isinstance(target, type)
        else [target]
    )
    hints: dict = {}
    for fn in fns:
        try:
            hints.update(typing.get_type_hints(fn))
        except Exception:  # noqa: BLE001, S112 - unevaluable annotations: not checked
            continue
    return hints


def check_params(target, params: dict, key: str, provided: Iterable[str] = ()) -> None:
    """The node's keys (`params`, without `_target_` and friends) against the target's signature.

    `provided`: parameters the run passes itself (the model, the client, ...). Unknown keys, missing required
    parameters and values of the wrong type (by the parameter's annotation, checked by pydantic) are a
    ConfigError naming `<key>.<parameter>`.
    """
    found = _parameters(target)
    if found is None:  # a builtin without a signature: nothing to check
        return
    accepted, open_kwargs = found
    provided = set(provided)
    if not open_kwargs:
        for name in params:
            if name not in accepted and name not in provided:
                takes = ", ".join(n for n in accepted if n not in provided) or "no keys"
                raise ConfigError(
                    f"{key}.{name}={params[name]}: unknown key ({_name(target)} takes: {takes})"
                )
    for name, p in accepted.items():
        if (
            p.default is p.empty
            and p.kind is not p.POSITIONAL_ONLY
            and name not in params
            and name not in provided
        ):
            raise ConfigError(f"{key}.{name}: required by {_name(target)} (add it to the node)")
    hints = _type_hints(target)
    for name, value in params.items():
        if name in provided or name not in hints or value is None and _allows_none(hints[name]):
            continue
        _check_type(hints[name], value, f"{key}.{name}")


def _allows_none(hint) -> bool:
    return hint is typing.Any or type(None) in typing.get_args(hint)


def _check_type(hint, value, where: str) -> None:
    from pydantic import TypeAdapter, ValidationError

    try:
        adapter = TypeAdapter(hint)
    except Exception:  # noqa: BLE001 - a type pydantic cannot describe: not checked
        return
    try:
        adapter.validate_python(value)
    except ValidationError:
        from eatlab.utils.schemas import describe  # the words of the node schemas: "a whole number or null"

        raise ConfigError(f"{where}={value}: expected {describe(hint)}") from None


def node_params(node) -> dict:
    """The node's own keys as plain values (resolved), without `_target_`, `_partial_`, ..."""
    d = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
    return {k: v for k, v in d.items() if not str(k).startswith("_")}


def build(node, key: str, **kwargs):
    """The component of `node` built with the run's objects `kwargs` (passed as they are).

    The node is checked first (`check_params`); an EatlabError or any other error raised by the component's own
    code comes out as itself, with its traceback.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    target = _import(node.get("_target_"), f"{key}._target_", "a class")
    check_params(target, node_params(node), key, provided=kwargs)
    try:
        factory = instantiate(node, _partial_=True, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        lines = [ln for ln in str(cause).splitlines() if ln.strip()]
        raise ConfigError(f"{key}: {lines[-1] if lines else type(cause).__name__}") from None
    return factory(**kwargs)
