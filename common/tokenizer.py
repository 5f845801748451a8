"""The tokenizer of a model, without the weights.

Drivers (train's data preflight, evolve's prompt budget) and train's tokenize actors need only the
tokenizer: for an s3:// model they copy its tokenizer files (a few MB) into a local cache, not the
13 GB model folder that only the workers running the model download.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import posixpath
import shutil
import tempfile
from pathlib import Path

from common import storage
from common.config import UserError
from common.models import cache_dir, model_files, resolve_model

# Everything AutoTokenizer reads (config.json: some tokenizers are found through the model type).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.json", "merges.txt", "vocab.txt", "chat_template.jinja", "chat_template.json",
                   "config.json", "generation_config.json")
TOKENIZER_SUFFIXES = (".model", ".tiktoken")  # SentencePiece / tiktoken vocabularies


def is_tokenizer_file(name: str) -> bool:
    return name in TOKENIZER_FILES or name.endswith(TOKENIZER_SUFFIXES)


def tokenizer_path(name: str) -> str:
    """A local folder (or hub id) with the tokenizer of `name`; s3:// folders: tokenizer files only."""
    if not name.startswith("s3://"):
        return resolve_model(name)
    version = json.dumps([name, [f for f in model_files(name) if is_tokenizer_file(posixpath.basename(f[0]))]])
    target = cache_dir() / "s3-tokenizers" / hashlib.sha1(version.encode()).hexdigest()[:16]
    if (target / "tokenizer_config.json").exists():
        return str(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the actors of one node may ask at once
        if not (target / "tokenizer_config.json").exists():
            _download_tokenizer(name, target)
    return str(target)


def _download_tokenizer(uri: str, target: Path) -> None:
    from pyarrow import fs

    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".download-"))
    try:
        filesys, inner = storage.filesystem(uri)
        infos = filesys.get_file_info(fs.FileSelector(inner, recursive=False))
        wanted = [i.path for i in infos if i.type == fs.FileType.File and is_tokenizer_file(posixpath.basename(i.path))]
        if not any(posixpath.basename(p) == "tokenizer_config.json" for p in wanted):
            raise UserError(f"the model {uri} has no tokenizer_config.json")
        for path in wanted:
            fs.copy_files(path, str(tmp / posixpath.basename(path)), source_filesystem=filesys,
                          destination_filesystem=fs.LocalFileSystem())
        os.replace(tmp, target)
    except OSError as exc:
        raise UserError(f"cannot read the tokenizer of {uri}: {str(exc).splitlines()[0]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_path(name))
