"""One storage layer for every job: local paths and s3:// through pyarrow filesystems."""
from __future__ import annotations

import json
import os
import posixpath
from typing import Any

from pyarrow import fs

from common.config import UserError


def filesystem(path: str) -> tuple[fs.FileSystem, str]:
    try:
        return fs.FileSystem.from_uri(path if "://" in path else os.path.abspath(path))
    except Exception as exc:  # pyarrow raises ArrowInvalid / OSError with long texts
        raise UserError(f"cannot open {path}: {str(exc).splitlines()[0]}") from None


def absolute(path: str) -> str:
    """Ray workers run in folders of their own: a local path handed to them must be absolute."""
    return path if "://" in path else os.path.abspath(os.path.expanduser(path))


def join(path: str, *parts: str) -> str:
    return posixpath.join(path, *parts) if "://" in path else os.path.join(path, *parts)


def exists(path: str) -> bool:
    filesys, inner = filesystem(path)
    return filesys.get_file_info(inner).type != fs.FileType.NotFound


def is_dir(path: str) -> bool:
    filesys, inner = filesystem(path)
    return filesys.get_file_info(inner).type == fs.FileType.Directory


def is_nonempty_dir(path: str) -> bool:
    filesys, inner = filesystem(path)
    if filesys.get_file_info(inner).type != fs.FileType.Directory:
        return False
    return bool(filesys.get_file_info(fs.FileSelector(inner, recursive=False)))


def list_files(path: str) -> list[str]:
    """Every file under a folder (recursive), as paths of the same kind as `path`."""
    filesys, inner = filesystem(path)
    infos = filesys.get_file_info(fs.FileSelector(inner, recursive=True))
    files = sorted(info.path for info in infos if info.type == fs.FileType.File)
    if "://" in path:
        scheme = path.split("://", 1)[0]
        return [f"{scheme}://{f}" for f in files]
    return files


def delete_dir(path: str) -> None:
    filesys, inner = filesystem(path)
    if filesys.get_file_info(inner).type == fs.FileType.Directory:
        filesys.delete_dir(inner)


def write_text(path: str, text: str) -> None:
    filesys, inner = filesystem(path)
    filesys.create_dir(posixpath.dirname(inner), recursive=True)
    with filesys.open_output_stream(inner) as out:
        out.write(text.encode())


def read_text(path: str) -> str:
    filesys, inner = filesystem(path)
    with filesys.open_input_stream(inner) as stream:
        return stream.read().decode()


def write_json(path: str, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def check_writable(path: str) -> None:
    """Fail before any model loads if the output location cannot be written."""
    probe = join(path, ".evolray-write-check")
    try:
        write_text(probe, "ok")
        filesys, inner = filesystem(probe)
        filesys.delete_file(inner)
    except UserError:
        raise
    except Exception as exc:
        raise UserError(f"cannot write to {path}: {str(exc).splitlines()[0]}") from None
