"""The one config loader: defaults, a YAML file, dotted overrides; errors that say where."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import Field

from proto.config import Config, ConfigError, dump, load, replace


class Limits(Config):
    time_s: float = Field(default=1.0, gt=0)
    retries: int = 0


class Step(Config):
    name: str
    steps: int = Field(gt=0)


class Schedule(Config):
    stages: list[Step] = []


class Sample(Config):
    generator_id: str = "g0"
    model: Path | None = None
    workers: int = 2
    limits: Limits = Limits()
    schedule: Schedule = Schedule()
    extra: dict[str, object] = {}


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sample.yaml"
    path.write_text(text)
    return path


def test_defaults_then_file_then_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 4\nlimits:\n  time_s: 2.5\n  retries: 1\n")
    cfg = load(Sample, path, ["limits.retries=3", "extra.deep.key=[1, 2]"], base={"workers": 3})
    assert cfg.workers == 4  # the file over `base`
    assert cfg.limits == Limits(time_s=2.5, retries=3)  # the override over the file
    assert cfg.extra == {"deep": {"key": [1, 2]}}  # free-form sections take any key
    assert load(Sample) == Sample()


def test_text_fields_keep_what_was_typed() -> None:
    cfg = load(Sample, None, ["generator_id=007", "model=/models/1e-6", "workers=007"])
    assert cfg.generator_id == "007"  # YAML would have read the integer 7
    assert cfg.model == Path("/models/1e-6")
    assert cfg.workers == 7
    assert load(Sample, None, ["model=null"]).model is None


def test_a_list_item_is_overridden_by_its_index(tmp_path: Path) -> None:
    path = write(tmp_path, "schedule:\n  stages:\n    - {name: a, steps: 1}\n    - {name: b, steps: 2}\n")
    cfg = load(Sample, path, ["schedule.stages.1.steps=3", "schedule.stages.0.name=007"])
    assert cfg.schedule.stages == [Step(name="007", steps=1), Step(name="b", steps=3)]
    with pytest.raises(ConfigError, match=r"schedule\.stages\.2 is not in the list"):
        load(Sample, path, ["schedule.stages.2.steps=3"])


def test_an_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 2\nlimits:\n  time_s: 1\n  retires: 2\n")
    with pytest.raises(ConfigError, match=r"sample\.yaml, line 4: limits\.retires: Extra inputs"):
        load(Sample, path)
    with pytest.raises(ConfigError, match=r"no field 'retires' in limits \(fields: time_s, retries\)"):
        load(Sample, None, ["limits.retires=2"])
    with pytest.raises(ConfigError, match=r"no field 'wokers' in the top level"):
        load(Sample, None, ["wokers=2"])


def test_a_duplicate_key_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "limits:\n  time_s: 1\n  retries: 1\n  time_s: 2\n")
    with pytest.raises(ConfigError, match=r"line 4: duplicate key limits\.time_s \(first at line 2\)"):
        load(Sample, path)


def test_a_bad_value_names_field_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "workers: 2\nschedule:\n  stages:\n    - name: a\n      steps: 0\n")
    with pytest.raises(ConfigError) as info:
        load(Sample, path)
    assert str(info.value).startswith(
        f"{path}, line 5: schedule.stages.0.steps: Input should be greater than 0"
    )
    with pytest.raises(
        ConfigError, match=r"^override workers=many: workers: Input should be a valid integer"
    ):
        load(Sample, None, ["workers=many"])


def test_file_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml"):
        load(Sample, tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(Sample, write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(Sample, write(tmp_path, "workers: [1\n"))
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        load(Sample, None, ["workers"])
    assert load(Sample, write(tmp_path, "")) == Sample()


def test_a_loaded_config_is_frozen_and_replace_validates() -> None:
    cfg = load(Sample)
    with pytest.raises(ValueError, match="frozen"):
        cfg.workers = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="frozen"):
        cfg.limits.retries = 3  # type: ignore[misc]
    changed = replace(cfg, workers=3, limits=replace(cfg.limits, retries=1))
    assert (changed.workers, changed.limits.retries, cfg.workers) == (3, 1, 2)
    with pytest.raises(ConfigError, match=r"limits\.time_s"):
        replace(cfg, limits={"time_s": 0})
    with pytest.raises(ConfigError, match="bogus"):
        replace(cfg, bogus=1)


def test_names_are_substituted_and_dump_round_trips(tmp_path: Path) -> None:
    path = write(tmp_path, "model: ${MODELS}/tiny\ngenerator_id: ${UNKNOWN}\n")
    cfg = load(Sample, path, names={"MODELS": "/cache"})
    assert cfg.model == Path("/cache/tiny") and cfg.generator_id == "${UNKNOWN}"
    again = write(tmp_path, dump(cfg))
    assert load(Sample, again) == cfg


def test_a_bad_override_is_named_as_the_override_not_as_a_line_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "base.yaml"
    path.write_text("workers: 3\nlimits:\n  time_s: 2\n")
    with pytest.raises(ConfigError, match=r"^override limits\.time_s=-1: limits\.time_s: ") as raised:
        load(Sample, path, ["limits.time_s=-1"])
    assert "line" not in str(raised.value)
