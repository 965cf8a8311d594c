"""SimConfig from code, `sim://` URLs, query strings and TOML files."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchgen.sim import SimConfig


def test_defaults_are_fast() -> None:
    config = SimConfig()
    assert config.ms_per_step <= 0.5 and config.switch_s <= 0.05 and config.speed == 1.0
    assert config.flavor == "a1111" and config.server_version == "v1.10.1"
    assert config.models[0] == "v1-5-pruned-emaonly.safetensors"


def test_from_query_converts_types() -> None:
    config = SimConfig.from_query(
        "?speed=2&models=a.safetensors,b/c.ckpt&fail_rate=0.1&die_after=5&webui=false"
        "&flavor=forge&api_auth=u:p&ms_per_step=0"
    )
    assert config.speed == 2.0 and config.models == ("a.safetensors", "b/c.ckpt")
    assert config.fail_rate == 0.1 and config.die_after == 5 and config.webui is False
    assert config.flavor == "forge" and config.api_auth == "u:p" and config.ms_per_step == 0.0
    assert SimConfig.from_query("die_after=none").die_after is None
    assert SimConfig.from_url("sim://") == SimConfig()
    assert SimConfig.from_url("sim://?speed=3").speed == 3.0


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("sped=2", "unknown simulator option 'sped'"),
        ("speed=fast", "simulator option 'speed'"),
        ("speed=0", "speed must be > 0"),
        ("flavor=sdnext", "flavor"),
        ("webui=maybe", "webui"),
        ("fail_rate=0.6&drop_rate=0.6", "must be <= 1"),
        ("api_auth=nocolon", "api_auth"),
        ("models=", "at least one checkpoint"),
    ],
)
def test_bad_values_name_the_key(query: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SimConfig.from_query(query)


def test_from_url_rejects_other_schemes() -> None:
    with pytest.raises(ValueError, match="sim://"):
        SimConfig.from_url("http://localhost:7860")


def test_from_file(tmp_path: Path) -> None:
    path = tmp_path / "sim.toml"
    path.write_text('[sim]\nspeed = 4\nmodels = ["x.safetensors"]\nfail_rate = 0.25\n')
    config = SimConfig.from_file(path)
    assert (config.speed, config.models, config.fail_rate) == (4.0, ("x.safetensors",), 0.25)
    flat = tmp_path / "flat.toml"
    flat.write_text('flavor = "forge"\ndie_after = 3\n')
    assert SimConfig.from_file(flat).die_after == 3
    flat.write_text("bogus = 1\n")
    with pytest.raises(ValueError, match="bogus"):
        SimConfig.from_file(flat)
