"""GGUF files as `model.path`: find the file, hash it, convert it once to a plain HF folder, return the folder.

`model.path=/x/model.gguf`, or `model.path=/x/dir` where dir holds exactly one `*.gguf` and no `config.json`, is
loaded through transformers' GGUF support (which needs the `gguf` package: `pip install gguf`, or the `gguf`
extra), dequantised to fp32 and saved once as an HF folder `<paths.models_dir>/gguf-<sha256[:16]>/`; every later
run (and every backend or the fine-tuning code, which all go through `eatlab.llm.factory.model_source`) loads
that folder. The folder carries `gguf_source.json` (the GGUF's path, size, sha256, the transformers version), by
which `eatlab.llm.identity` keys the response cache on the GGUF file's sha256.

The conversion is built in a temporary sibling folder and renamed into place, so an interrupted conversion never
leaves a folder that a later run would trust; a lock file serialises concurrent conversions of the same file (a
joblib sweep) so that the weights are dequantised once. The file's sha256 is remembered by path, size and
modification time in `<paths.models_dir>/gguf-sha256.json`, so a later run does not read a multi-GB file again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
from pathlib import Path

from eatlab.errors import ConfigError
from eatlab.llm.identity import GGUF_SOURCE, gguf_sha256

log = logging.getLogger(__name__)

INSTALL_HINT = "reading a GGUF file needs the gguf package: pip install gguf (or pip install 'eatlab[gguf]')"
SHA_MEMO = "gguf-sha256.json"
_CHUNK = 8 << 20
_SHA: dict[tuple, str] = {}  # (resolved path, size, mtime_ns) -> sha256, this process
_DONE: dict[tuple, Path] = {}  # (resolved path, size, mtime_ns, models dir) -> converted folder, this process


def is_gguf_path(path: str | Path) -> bool:
    return Path(path).suffix.lower() == ".gguf"


def find_gguf(path: str | Path) -> Path | None:
    """The GGUF file that `model.path` names, or None when it names something else (an HF folder, a hub id).

    A `.gguf` path must be a file; a folder with a `config.json` is an HF folder whatever else it holds; a
    folder without one is a GGUF folder when it holds `*.gguf` files, and then it must hold exactly one.
    """
    p = Path(path)
    if is_gguf_path(p):
        if not p.is_file():
            raise ConfigError(f"model.path={path}: no such GGUF file")
        return p
    if not p.is_dir() or (p / "config.json").is_file():
        return None
    found = sorted(f for f in p.iterdir() if is_gguf_path(f) and f.is_file())
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise ConfigError(
            f"model.path={path}: holds {len(found)} GGUF files ({names}); point model.path at one of them"
        )
    return found[0] if found else None


def _stamp(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | Path, models_dir: str | Path | None = None) -> str:
    """sha256 (hex) of the file, remembered by (path, size, mtime) in this process and in `models_dir`."""
    path = Path(path)
    stamp = _stamp(path)
    if stamp in _SHA:
        return _SHA[stamp]
    memo = Path(models_dir) / SHA_MEMO if models_dir is not None else None
    entry = _read_json(memo).get(stamp[0]) if memo is not None else None
    if isinstance(entry, dict) and [entry.get("size"), entry.get("mtime_ns")] == list(stamp[1:]):
        sha = str(entry.get("sha256"))
    else:
        sha = _hash_file(path)
        if memo is not None:
            data = _read_json(memo)  # again: another process may have added entries meanwhile
            data[stamp[0]] = {"size": stamp[1], "mtime_ns": stamp[2], "sha256": sha}
            try:
                _write_json_atomic(memo, data)
            except OSError as exc:  # only a cache of hashes: the next run hashes again
                log.debug("could not write %s (%s)", memo, exc)
    _SHA[stamp] = sha
    return sha


def converted_folder(sha256: str, models_dir: str | Path) -> Path:
    """Where the HF folder of the GGUF file with this sha256 lives."""
    return Path(models_dir) / f"gguf-{sha256[:16]}"


def _is_complete(folder: Path, sha256: str) -> bool:
    return (folder / "config.json").is_file() and gguf_sha256(folder) == sha256


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _usual_modes(folder: Path) -> None:
    """mkdtemp and some writers create owner-only folders and files: give them the modes of the user's umask."""
    mask = _umask()
    folder.chmod(0o777 & ~mask)
    for f in folder.iterdir():
        if f.is_file():
            f.chmod(0o666 & ~mask)


@contextlib.contextmanager
def _lock(path: Path):
    """An exclusive lock on `path` (POSIX); without fcntl, no lock (the atomic rename still keeps folders whole)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield False
        return
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield True
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _convert(gguf: Path, sha256: str, tmp: Path) -> None:
    """Load the GGUF through transformers (dequantised to fp32) and save tokenizer and weights as an HF folder."""
    try:
        import gguf as _gguf_package  # noqa: F401 - transformers needs it to read the file
    except ImportError as exc:
        raise ConfigError(f"model.path={gguf}: {INSTALL_HINT} ({exc})") from None
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    try:
        tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except struct.error:  # the gguf reader unpacks the header with struct: a file cut inside it
        raise ConfigError(
            f"model.path={gguf}: the GGUF file is cut short inside its header ({gguf.stat().st_size} bytes): "
            "an interrupted download or copy? fetch it again"
        ) from None
    except (ValueError, KeyError, NotImplementedError, RuntimeError) as exc:
        raise ConfigError(
            f"model.path={gguf}: transformers {transformers.__version__} cannot load this GGUF file "
            f"({type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]})"
        ) from None
    # The loaded model is marked as quantised (gguf) and refuses to save: re-create it from its config (on the
    # meta device, so the weights are not held twice) and hand it the dequantised tensors.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(loaded.config, dtype=torch.float32)
    result = model.load_state_dict(loaded.state_dict(), strict=False, assign=True)
    model.tie_weights()
    empty = [n for n, t in model.state_dict().items() if t.is_meta]
    if result.unexpected_keys or empty:
        raise ConfigError(
            f"model.path={gguf}: converting it left weights unset ({', '.join(empty[:5])}) or unused "
            f"({', '.join(result.unexpected_keys[:5])})"
        )
    model.generation_config = loaded.generation_config
    model.save_pretrained(str(tmp))
    tok.save_pretrained(str(tmp))
    config = json.loads((tmp / "config.json").read_text(encoding="utf-8"))
    config.pop("quantization_config", None)  # the weights are plain fp32 now
    (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    # written last: the folder is complete when it has this file (and only then is it renamed into place)
    source = {
        "gguf": str(gguf.resolve()),
        "size": gguf.stat().st_size,
        "sha256": sha256,
        "transformers": transformers.__version__,
    }
    (tmp / GGUF_SOURCE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")


def ensure_hf_folder(gguf: str | Path, models_dir: str | Path) -> Path:
    """The HF folder converted from the GGUF file (converted now if it is not there yet)."""
    gguf = Path(gguf)
    models_dir = Path(models_dir)
    memo_key = (*_stamp(gguf), str(models_dir.resolve()))
    done = _DONE.get(memo_key)
    if done is not None and (done / GGUF_SOURCE).is_file():
        return done
    sha = file_sha256(gguf, models_dir)
    dst = converted_folder(sha, models_dir)
    if _is_complete(dst, sha):
        log.info("reusing HF folder %s converted from %s", dst, gguf.name)
    else:
        models_dir.mkdir(parents=True, exist_ok=True)
        with _lock(models_dir / f".{dst.name}.lock") as locked:
            if _is_complete(dst, sha):  # another process converted it while this one waited
                log.info("reusing HF folder %s converted from %s", dst, gguf.name)
            else:
                if locked:  # holding the lock: build folders left by killed conversions are stale
                    for stale in models_dir.glob(f".{dst.name}.build.*"):
                        shutil.rmtree(stale, ignore_errors=True)
                log.info("converting %s to HF folder %s (once)", gguf.name, dst)
                tmp = Path(tempfile.mkdtemp(dir=models_dir, prefix=f".{dst.name}.build."))
                try:
                    _convert(gguf, sha, tmp)
                    _usual_modes(tmp)
                    if _is_complete(dst, sha):  # converted meanwhile without a lock: keep the first
                        shutil.rmtree(tmp, ignore_errors=True)
                    else:
                        if dst.exists():  # an incomplete folder under our name: never trusted, replaced
                            shutil.rmtree(dst)
                        os.replace(tmp, dst)
                except BaseException:
                    shutil.rmtree(tmp, ignore_errors=True)
                    raise
    _DONE[memo_key] = dst
    return dst


def resolve_gguf(path: str | Path, models_dir: str | Path) -> Path | None:
    """The converted HF folder when `model.path` names a GGUF file (or a folder holding one), else None."""
    gguf = find_gguf(path)
    return ensure_hf_folder(gguf, models_dir) if gguf is not None else None
