"""Find the class or function a config node's `_target_` names, with a one-line error naming the key."""

from __future__ import annotations

from hydra.utils import get_method
from omegaconf import OmegaConf

from eatlab.errors import ConfigError


def locate(cfg, key: str, example: str):
    """The object named by `<key>` (e.g. `backend._target_`), imported; ConfigError naming the key otherwise."""
    target = OmegaConf.select(cfg, key, default=None)
    if not target:
        raise ConfigError(f"{key}: required (e.g. {example})")
    try:
        return get_method(str(target))
    except Exception as exc:  # noqa: BLE001 - Hydra wraps import errors in several types
        cause = exc.__cause__ or exc
        why = str(cause).strip().splitlines()[-1] if str(cause).strip() else type(cause).__name__
        raise ConfigError(f"{key}={target}: cannot import ({why})") from None


def require_subclass(obj, base: type, key: str, target) -> type:
    if not (isinstance(obj, type) and issubclass(obj, base)):
        raise ConfigError(f"{key}={target}: not a subclass of {base.__module__}.{base.__qualname__}")
    return obj


def build(node, key: str, **kwargs):
    """`hydra.utils.instantiate(node, **kwargs)`; an EatlabError of the constructor comes out as itself (Hydra
    wraps it), any other construction error as one line naming the config node."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    from eatlab.errors import EatlabError

    try:
        return instantiate(node, **kwargs, _convert_="all")
    except (InstantiationException, TypeError) as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, EatlabError):
            raise cause from None
        lines = [ln for ln in str(cause).splitlines() if ln.strip()]
        raise ConfigError(f"{key}: {lines[-1] if lines else type(cause).__name__}") from None
