"""Configuration: params file, AMR_* overrides, errors that name key, value and source."""

from pathlib import Path

import pytest
import yaml

from components.core.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_parse_and_cover_every_section():
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    settings = load_settings(ROOT / "params.yaml")
    assert set(data) == set(Settings.model_fields) - {"home"}
    for section, values in data.items():
        assert set(values) == set(type(getattr(settings, section)).model_fields), section


def test_env_overrides_params_file(tmp_path, monkeypatch):
    params = tmp_path / "p.yaml"
    params.write_text("ingest:\n  context_length: 64\n  clusters_per_drop: 3\n")
    monkeypatch.setenv("AMR_INGEST__CONTEXT_LENGTH", "256")
    monkeypatch.setenv("AMR_HOME", str(tmp_path / "home"))
    s = load_settings(params)
    assert s.ingest.context_length == 256
    assert s.ingest.clusters_per_drop == 3
    assert s.home == tmp_path / "home"
    assert s.memory_uri == str(tmp_path / "home" / "memory")


def test_wrong_env_value_names_key_value_source(monkeypatch):
    monkeypatch.setenv("AMR_INGEST__HOLDOUT_FRACTION", "0.9")
    with pytest.raises(ConfigError) as exc:
        load_settings()
    msg = str(exc.value)
    assert "ingest.holdout_fraction" in msg and "'0.9'" in msg
    assert "AMR_INGEST__HOLDOUT_FRACTION" in msg and "less than 0.5" in msg


def test_wrong_file_value_and_unknown_key(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("replay:\n  strategy: greedy\n  colour: blue\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(params)
    msg = str(exc.value)
    assert "replay.strategy = 'greedy'" in msg and "'none', 'uniform', 'balanced', 'amr' or 'odm'" in msg
    assert "replay.colour" in msg and "unknown key" in msg and str(params) in msg


def test_yaml_syntax_error_names_line(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("ingest:\n  context_length: 64\n bad: [\n")
    with pytest.raises(ConfigError, match=r"p.yaml:\d+: not valid YAML"):
        load_settings(params)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_settings(tmp_path / "nope.yaml")


def test_cli_overrides_are_validated():
    with pytest.raises(ConfigError, match="replay.strategy"):
        load_settings(None, **{"replay.strategy": "bogus"})
    assert load_settings(None, **{"replay.strategy": "none"}).replay.strategy == "none"


def test_grad_accum_larger_than_the_per_process_batch_is_refused(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("train:\n  batch_size: 8\n  nproc: 2\n  grad_accum: 8\n")
    with pytest.raises(ConfigError) as exc:
        load_settings(params)
    msg = str(exc.value)
    assert "grad_accum = 8" in msg and "4 sequences each" in msg and "at most 4" in msg
    assert load_settings(None, **{"train.batch_size": 8, "train.nproc": 2, "train.grad_accum": 4}).train.grad_accum == 4
