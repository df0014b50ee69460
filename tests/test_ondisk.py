"""DiskArray reads like the numpy array it holds, holds no memory that grows with it, and leaves no file behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from components.core import ondisk
from components.core.ondisk import Arrays, DiskArray, remove_leftovers
from components.core.text import load_tokenizer
from tests.helpers import python_docs


def _token_ids(n_docs: int) -> tuple[np.ndarray, np.ndarray]:
    """Byte-tokenizer ids of real Python sources, and the documents' token counts."""
    lists = load_tokenizer("byte").encode_batch(python_docs(n_docs))
    return np.concatenate([np.asarray(t, np.int64) for t in lists]), np.array([len(t) for t in lists], np.int64)


@pytest.mark.parametrize("cache", [32, ondisk.CACHE])
@pytest.mark.parametrize("dtype", [np.uint16, np.int32, np.int64])
def test_disk_array_equals_numpy_for_every_read(tmp_path, monkeypatch, dtype, cache):
    monkeypatch.setattr(ondisk, "GATHER", 64)  # gathers spread over many blocks
    monkeypatch.setattr(ondisk, "CACHE", cache)  # small reads across the cached block's end too
    ids, _ = _token_ids(6)
    values = ids.astype(dtype)
    with DiskArray(tmp_path / "a-1", dtype) as arr:
        for start in range(0, len(values), 5000):  # appended in pieces, as an ingest does
            arr.append(values[start : start + 5000])
        assert len(arr) == len(values) and arr.dtype == np.dtype(dtype) and arr.shape == values.shape
        assert arr[0] == values[0] and arr[-1] == values[-1] and arr[12345] == values[12345]
        for a, b in [
            (0, 10),
            (777, 20_000),
            (len(values) - 3, len(values) + 9),
            (50, 50),
            (90, 10),
            (30, 40),
            (33, 35),
        ]:
            assert np.array_equal(arr[a:b], values[a:b]) and arr[a:b].dtype == np.dtype(dtype)
        assert np.array_equal(arr[5:900:7], values[5:900:7])
        rng = np.random.default_rng(0)
        for idx in (rng.integers(0, len(values), 3000), np.array([4, 4, 0, -1]), np.arange(100, 400)):
            assert np.array_equal(arr[idx], values[idx])
        assert arr[np.empty(0, np.int64)].size == 0
        assert np.array_equal(np.concatenate(list(arr.blocks(4096))), values)
        assert arr.sum() == values.sum(dtype=np.int64) and arr.max() == values.max()
        with pytest.raises(IndexError):
            arr[len(values)]
        with pytest.raises(IndexError):
            arr[np.array([0, len(values)])]


@pytest.mark.parametrize("side", ["left", "right"])
def test_searchsorted_equals_numpy_on_document_starts(tmp_path, monkeypatch, side):
    monkeypatch.setattr(ondisk, "SAMPLE", 16)  # many sample intervals
    _, lengths = _token_ids(120)
    spans = np.repeat(lengths + 1, 3)  # equal neighbours too: a sorted array with runs after cumsum of zeros
    starts = np.sort(np.concatenate([np.cumsum(spans) - spans, (np.cumsum(spans) - spans)[::5]]))
    with DiskArray(tmp_path / "s-1", np.int64) as arr:
        arr.append(starts[:100])
        arr.append(starts[100:])
        probes = np.concatenate([starts[::3], starts[::7] + 1, [-5, 0, starts[-1], starts[-1] + 10]])
        probes = np.concatenate([probes, np.arange(0, starts[-1], 128)])  # the rows' first tokens of a layout
        assert np.array_equal(arr.searchsorted(probes, side=side), np.searchsorted(starts, probes, side=side))
        for v in probes[::40].tolist():  # one value at a time (a layout's row range), as an array and a scalar
            assert arr.searchsorted(np.array([v]), side=side)[0] == np.searchsorted(starts, v, side=side)
            assert int(arr.searchsorted(v, side=side)) == np.searchsorted(starts, v, side=side)
        grid = np.arange(0, starts[-1], 997).reshape(-1, 1)
        assert np.array_equal(arr.searchsorted(grid, side=side), np.searchsorted(starts, grid, side=side))


def _traced_block_reads(path: Path, n: int) -> int:
    """Peak bytes traced while an n-value int64 array is written and read back by blocks."""
    ids, _ = _token_ids(4)
    tracemalloc.start()
    try:
        with DiskArray(path, np.int64) as arr:
            for start in range(0, n, len(ids)):
                arr.append(ids[: min(len(ids), n - start)])
            total = sum(int(block.sum()) for block in arr.blocks(1 << 14))
            assert total > 0
            arr.searchsorted(np.arange(0, 1000))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_length(tmp_path):
    small = _traced_block_reads(tmp_path / "m-1", 200_000)
    large = _traced_block_reads(tmp_path / "m-2", 4_000_000)  # 32 MB on disk
    assert large < small + 200_000, (small, large)  # the sample: 8 bytes per SAMPLE values, no more


def test_files_are_removed_on_close(tmp_path):
    arrays = Arrays(tmp_path, "ingest-d1-")
    a, b = arrays.new(np.uint16), arrays.new(np.int64)
    a.append(np.arange(10))
    b.append(np.arange(10))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([a.path.name, b.path.name])
    assert a.path.name.endswith(f"-{os.getpid()}")
    arrays.release(a)
    assert not a.path.exists() and b.path.exists()
    arrays.close()
    assert list(tmp_path.iterdir()) == []


CHILD = """
import sys, time
import numpy as np
from components.core.ondisk import Arrays
arrays = Arrays(sys.argv[1], "ingest-killed-")
arrays.new(np.int64).append(np.arange(1000))
print(arrays._arrays[0].path, flush=True)
time.sleep(60)
"""


def test_leftovers_of_a_killed_process_are_removed(tmp_path):
    env = os.environ | {"PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path)], stdout=subprocess.PIPE, env=env, text=True)
    path = Path(proc.stdout.readline().strip())
    live = Arrays(tmp_path, "ingest-live-").new(np.int64)
    assert path.exists() and remove_leftovers(tmp_path, "ingest-") == []  # both processes alive: nothing removed
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert remove_leftovers(tmp_path, "ingest-") == [path] and not path.exists()
    assert live.path.exists()
    live.close()


def test_layouts_on_disk_build_the_rows_of_layouts_in_memory(tmp_path, monkeypatch):
    """split_layouts with `arrays`: each split's documents and starts are DiskArrays, and every row, length, first
    document and row hash equals the in-memory layout's; the spill's metadata on disk reads back its tokens."""
    from components.core import packing
    from components.core.packing import doc_hash, split_layouts
    from components.ingest.spill import Spill

    monkeypatch.setattr(packing, "SPLIT_BLOCK", 7)  # splits built across many blocks
    monkeypatch.setattr(ondisk, "SAMPLE", 4)  # searchsorted across many sample intervals
    texts = python_docs(40)
    token_lists = load_tokenizer("byte").encode_batch(texts)
    with Spill(tmp_path, "d1") as spill:
        spill.append(token_lists[:25])
        spill.append(token_lists[25:])
        assert [spill.tokens(i).tolist() for i in (39, 0, 24, 25)] == [list(token_lists[i]) for i in (39, 0, 24, 25)]
        lengths = np.array([len(t) for t in token_lists])
        assert np.array_equal(spill.lengths(), lengths) and np.array_equal(
            np.concatenate(list(spill.length_blocks(6))), lengths
        )
        assert np.array_equal(spill.lengths_at([3, 30, 3]), lengths[[3, 30, 3]])
        args = (lengths, [doc_hash(t) for t in texts], 16, 256, 257, 0.2, 2)
        disk = split_layouts(*args, fetch=spill.tokens, arrays=spill.arrays)
        memory = split_layouts(*args, fetch=token_lists.__getitem__)
        for a, b in ((disk.train, memory.train), (disk.holdout, memory.holdout)):
            assert isinstance(a.tokens.layout.starts, DiskArray) and isinstance(a.tokens.layout.docs, DiskArray)
            n = len(b.lengths)
            assert len(a.lengths) == n > 50
            assert np.array_equal(a.tokens[0:n], b.tokens[0:n]) and np.array_equal(
                a.tokens[[5, 1, 2, n - 1]], b.tokens[[5, 1, 2, n - 1]]
            )
            assert np.array_equal(np.asarray(a.first_doc), np.asarray(b.first_doc))
            assert np.array_equal(np.asarray(a.lengths), np.asarray(b.lengths))
        assert list(disk.train_doc_hashes) == list(memory.train_doc_hashes)
        files = list(tmp_path.joinpath("tmp").iterdir())
        assert len(files) == 6  # the tokens, their metadata, each split's documents and starts
    assert list(tmp_path.joinpath("tmp").iterdir()) == []
