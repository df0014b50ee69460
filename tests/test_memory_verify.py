"""`amr memory --verify` on a real LanceDB memory, and loading damaged safetensors weights."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from components.adapters.memory import Memory
from components.adapters.records import MemoryCorrupted
from components.cli import app
from components.ingest import ingest_source
from components.training.model import WeightsError, build_model, load_model, save_model
from tests.helpers import settings_for, three_drops

SMALL = {
    "AMR_INGEST__CONTEXT_LENGTH": "64",
    "AMR_INGEST__CLUSTERS_PER_DROP": "2",
    "AMR_INGEST__MIN_HOLDOUT_SEQUENCES": "2",
}


@pytest.fixture
def memory_home(tmp_path, monkeypatch):
    """A memory ingested from three drops of real text; AMR_* points the CLI at it."""
    home = tmp_path / "home"
    three_drops(tmp_path / "drops")
    assert {r.status for r in ingest_source(settings_for(home), str(tmp_path / "drops"), show_progress=False)} == {
        "ingested"
    }
    monkeypatch.setenv("AMR_HOME", str(home))
    for key, value in SMALL.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return home


def data_file(home: Path, drop_id: str) -> Path:
    return Path(Memory.open(settings_for(home)).verify().files[drop_id][0])


def verify_cli() -> tuple[int, str]:
    res = CliRunner().invoke(app, ["memory", "--verify"])
    # rich wraps at the runner's 80 columns, folding a long path mid-name or breaking a line at a space (which it
    # drops), wherever the tmp path's length puts the edge: compare without whitespace (see `has`)
    return res.exit_code, "".join(res.output.split())


def has(output: str, text: str) -> bool:
    return "".join(text.split()) in output


def test_healthy_memory_verifies_with_a_summary(memory_home):
    report = Memory.open(settings_for(memory_home)).verify()
    assert report.version > 0 and sorted(report.files) == ["d1-code", "d2-licenses", "d3-docs"]
    code, output = verify_cli()
    assert code == 0, output
    assert has(output, f"memory version {report.version} healthy, 3 drops") and has(output, f"{report.rows} rows")
    # with a lock file of the same version, the rows are also compared with its hashes
    assert CliRunner().invoke(app, ["memory", "lock"]).exit_code == 0
    code, output = verify_cli()
    assert code == 0 and has(output, "rows match memory.lock.json")


@pytest.mark.parametrize("offset", [0, 2000], ids=["header", "mid-page"])
def test_garbage_in_a_data_file_is_named(memory_home, offset):
    target = data_file(memory_home, "d2-licenses")
    with open(target, "r+b") as fh:
        fh.seek(offset)
        fh.write(os.urandom(4096))
    with pytest.raises(MemoryCorrupted, match=target.name):
        Memory.open(settings_for(memory_home)).verify()
    code, output = verify_cli()
    assert code == 1
    assert target.name in output and has(output, "Fix: restore the memory from a backup")
    assert output.startswith("error:") and "Traceback" not in output


def test_deleted_data_file_is_named(memory_home):
    target = data_file(memory_home, "d1-code")
    target.unlink()
    code, output = verify_cli()
    assert code == 1 and target.name in output and has(output, "cannot be read") and "Traceback" not in output


def test_verify_compares_rows_with_the_lock_file(memory_home):
    """Bytes that decode to plausible values are caught by the lock's row hashes."""
    assert CliRunner().invoke(app, ["memory", "lock"]).exit_code == 0
    memory = Memory.open(settings_for(memory_home))
    rows = memory.table().to_lance().to_table(columns=["tokens"], filter="drop_id = 'd3-docs'")
    tokens = rows.column("tokens")[0].as_py()
    target = data_file(memory_home, "d3-docs")
    raw = target.read_bytes()
    # swap two distinct token values inside d3-docs' file: still valid token ids, other content
    needle = bytes(torch.tensor(tokens[:4], dtype=torch.int32).numpy().tobytes())
    if needle not in raw:
        pytest.skip("tokens are not stored plainly in this Lance file version")
    swapped = bytes(torch.tensor(tokens[1::-1] + tokens[2:4], dtype=torch.int32).numpy().tobytes())
    target.write_bytes(raw.replace(needle, swapped, 1))
    code, output = verify_cli()
    assert code == 1 and target.name in output and has(output, "differ from memory.lock.json")


@pytest.mark.parametrize("keep", [100, 0.5], ids=["header", "half"])
def test_truncated_safetensors_names_the_file_and_the_fix(tmp_path, keep):
    cfg = settings_for(tmp_path).train
    save_model(build_model(cfg, vocab_size=300, context_length=64, eos_id=1, pad_id=0), tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(WeightsError, match="model.safetensors: not a complete safetensors file") as info:
        load_model(tmp_path / "m")
    assert str(weights) in str(info.value) and "Fix:" in str(info.value)
