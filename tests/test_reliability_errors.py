"""User mistakes that used to end in a traceback or pass silently: each is one line now (exit 2), or read right."""

from __future__ import annotations

import subprocess
import sys

import pytest

from eatlab.cli.repair import check_cache
from eatlab.errors import ConfigError
from eatlab.llm.cache import ResponseCache


def test_a_folder_as_the_cache_file_is_one_line_naming_the_file_meant(tmp_path):
    """cache.path=<a folder> raised IsADirectoryError from the header check (a traceback) on f4a7be8."""
    expected = f"cache.path={tmp_path}: is a folder, not a cache file (did you mean cache.path={tmp_path / 'responses.sqlite'}?)"
    for mode in ("readwrite", "readonly"):
        with pytest.raises(ConfigError) as e:
            ResponseCache(tmp_path, mode=mode).ensure_open()
        assert str(e.value) == expected
    with pytest.raises(ConfigError, match="is a folder"):
        check_cache(tmp_path)
    for cmd in ("check", "repair", "stats"):
        r = subprocess.run(
            [sys.executable, "-m", "eatlab.cli.cache", cmd, "--cache", str(tmp_path)],
            capture_output=True,
            text=True,
        )
        assert (r.returncode, r.stderr, r.stdout) == (2, f"error: {expected}\n", ""), cmd
    assert ResponseCache(tmp_path, mode="off").get_many(["k"]) == {}  # a cache that is off never looks
