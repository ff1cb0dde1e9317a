"""Run folders: one per run, never overwritten."""

from __future__ import annotations

from pathlib import Path


def create_run_dir(out_dir: str | Path, name: str) -> Path:
    """Create ``out_dir/name``; if it exists, ``name-2``, ``name-3``, ... An existing folder is never reused."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    candidate, n = out / name, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = out / f"{name}-{n}"
