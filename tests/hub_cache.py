"""Build a Hugging Face Hub cache on disk exactly as ``huggingface_hub`` lays it out, so the real
download/listing code runs offline (``HF_HUB_OFFLINE=1``) against it.

Layout (``huggingface_hub`` cache, one folder per repo)::

    <cache>/models--ORG--NAME/
        blobs/<sha256 of the content>          # each file's bytes, stored once
        snapshots/<commit sha>/<path in repo>  # relative symlink to ../../blobs/<sha256>
        refs/<branch or tag>                   # the commit sha that revision points at
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

FileSource = str | os.PathLike | bytes


def repo_folder_name(repo_id: str, repo_type: str = "model") -> str:
    return f"{repo_type}s--" + repo_id.replace("/", "--")


def folder_files(folder: str | os.PathLike, prefix: str = "", skip: tuple[str, ...] = ()) -> dict[str, Path]:
    """``{path in repo: local file}`` for every file under ``folder``, placed under ``prefix`` in the repo."""
    folder = Path(folder)
    files = {}
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).as_posix()
        if path.is_file() and not any(rel == s or rel.startswith(s + "/") for s in skip):
            files[f"{prefix.rstrip('/')}/{rel}" if prefix else rel] = path
    return files


def write_hub_cache(
    cache_dir: str | os.PathLike,
    repo_id: str,
    revisions: Mapping[str, Mapping[str, FileSource]],
    repo_type: str = "model",
) -> dict[str, str]:
    """Write ``revisions`` (``{ref name: {path in repo: file path or bytes}}``) into the cache.

    Each ref gets its own commit (a fake 40-hex sha derived from its name). Returns ``{ref: commit sha}``.
    """
    repo = Path(cache_dir) / repo_folder_name(repo_id, repo_type)
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    commits = {}
    for ref, files in revisions.items():
        commit = hashlib.sha1(f"{repo_id}@{ref}".encode()).hexdigest()
        commits[ref] = commit
        snapshot = repo / "snapshots" / commit
        for rel, source in files.items():
            data = source if isinstance(source, bytes) else Path(source).read_bytes()
            blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
            if not blob.exists():
                blob.write_bytes(data)
            target = snapshot / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() or target.is_symlink():
                target.unlink()
            target.symlink_to(os.path.relpath(blob, target.parent))
        ref_file = repo / "refs" / ref
        ref_file.parent.mkdir(parents=True, exist_ok=True)
        ref_file.write_text(commit)
    return commits
