"""``[database] pool_size``: the most PostgreSQL connections one process holds."""

from __future__ import annotations

import pytest

from proctor import ConfigError, Proctor
from proctor.bootstrap import init_home
from proctor.config import load


def _home(tmp_path, database: str):
    home = tmp_path / "home"
    init_home(home)
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text().replace("[database]\n", f"[database]\n{database}\n", 1))
    return home


def test_the_default_is_eight(tmp_path):
    assert load(_home(tmp_path, "")).pool_size == 8


@pytest.mark.parametrize("value", ["0", "-1", "2.5", '"4"', "true"])
def test_a_bad_pool_size_names_the_field(tmp_path, value):
    home = _home(tmp_path, f"pool_size = {value}")
    with pytest.raises(ConfigError) as caught:
        load(home)
    assert caught.value.field == "database.pool_size"
    assert "integer >= 1" in caught.value.message


def test_the_environment_wins_and_is_checked(tmp_path, monkeypatch):
    home = _home(tmp_path, "pool_size = 4")
    monkeypatch.setenv("PROCTOR_DATABASE_POOL_SIZE", "12")
    assert load(home).pool_size == 12
    monkeypatch.setenv("PROCTOR_DATABASE_POOL_SIZE", "many")
    with pytest.raises(ConfigError) as caught:
        load(home)
    assert caught.value.field == "PROCTOR_DATABASE_POOL_SIZE"


def test_the_postgres_store_of_an_instance_uses_it(tmp_path, pg_url):
    home = _home(tmp_path, "pool_size = 3")
    cfg = home / "config.toml"
    cfg.write_text(cfg.read_text().replace('"sqlite:///proctor.db"', f'"{pg_url}"'))
    p = Proctor.open(home)
    try:
        assert p.gateway.store._pool.max_size == 3  # type: ignore[attr-defined]
    finally:
        p.close()
