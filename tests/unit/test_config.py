"""``config.load`` and ``load_catalog_file``: every value is type-checked, every key known."""

from __future__ import annotations

from pathlib import Path

import pytest

from proctor.bootstrap import init_home
from proctor.config import load, load_catalog_file
from proctor.errors import ConfigError


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The config.toml a stock ``proctor init`` writes."""
    home = tmp_path_factory.mktemp("stock") / "home"
    init_home(home)
    return (home / "config.toml").read_text()


def _home(tmp_path: Path, text: str) -> Path:
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    (home / "config.toml").write_text(text)
    return home


def _edited(tmp_path: Path, stock: str, old: str, new: str) -> Path:
    assert old in stock, old
    return _home(tmp_path, stock.replace(old, new, 1))


def _error(home: Path, env: dict[str, str] | None = None) -> ConfigError:
    with pytest.raises(ConfigError) as caught:
        load(home, env={} if env is None else env)
    return caught.value


class TestStock:
    def test_the_stock_config_loads_with_its_defaults(self, tmp_path, stock):
        """The file ``proctor init`` writes loads, and gives the documented defaults."""
        s = load(_home(tmp_path, stock), env={})

        assert (s.sandbox, s.store_prompt) == (False, False)
        assert (s.confirm_ttl_seconds, s.approval_ttl_seconds) == (3600, 86_400)
        assert s.queue_ttl_seconds == 3600
        assert s.report_grace_seconds == 60
        assert (s.agentic_max, s.hybrid_max) == (10, 15)
        assert (s.checkpoint_every, s.checkpoint_interval_seconds) == (1000, 60)

    def test_every_documented_key_is_known(self, tmp_path, stock):
        """Each key that init writes (commented or not) and the docs name loads together."""
        extra = """
[agents.travel-bot]
public_key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

[console]
url = "https://proctor.example.com/"

[observability]
otlp_endpoint = "http://collector:4318"
service_name = "p1"
log_format = "json"

[auth.jwt]
jwks_file = "jwks.json"
issuer = "https://idp.example.com"
audience = "proctor-api"

[guards]
review_sample_rate = 0.05

[guards.breaker]
cost_spike = 1e9

[[guards.rate_limits]]
scope = "agent"
key = "*"
limit = 60
per_seconds = 60

[[webhooks]]
url = "https://hooks.example.com/proctor"
events = ["approval.needed"]
secret_env = "S"
format = "slack"
name = "ops"

[[tickets]]
url = "https://tickets.example.com/hooks/proctor"
secret_env = "S"
"""
        text = stock.replace("# pool_size = 8", "pool_size = 8").replace(
            '# origin = "example.com/proctor"', 'origin = "example.com/proctor"'
        )
        text = text.replace(
            "[execution]\n",
            '[execution]\nworker_threads = 4\nrunners = ["mcp"]\n',
        )

        s = load(_home(tmp_path, text + extra), env={"S": "s"})

        assert s.origin == "example.com/proctor"
        assert s.console_url == "https://proctor.example.com"
        assert s.runners == ("mcp",)
        assert s.log_format == "json"


class TestBooleans:
    @pytest.mark.parametrize(
        ("old", "new", "field"),
        [
            ("store_prompt = false", 'store_prompt = "false"', "audit.store_prompt"),
            ("store_prompt = false", "store_prompt = 0", "audit.store_prompt"),
            ("sandbox = false", 'sandbox = "false"', "execution.sandbox"),
            ("sandbox = false", "sandbox = 1", "execution.sandbox"),
        ],
    )
    def test_a_boolean_must_be_a_toml_boolean(self, tmp_path, stock, old, new, field):
        """A quoted or numeric boolean is refused: ``bool("false")`` would be true."""
        error = _error(_edited(tmp_path, stock, old, new))

        assert error.field == field
        assert "true or false" in error.message
        assert error.hint is not None and "without quotes" in error.hint

    def test_true_is_true(self, tmp_path, stock):
        """A TOML true is read as true."""
        home = _edited(tmp_path, stock, "store_prompt = false", "store_prompt = true")

        assert load(home, env={}).store_prompt is True

    def test_the_file_is_checked_even_when_the_environment_overrides_it(self, tmp_path, stock):
        """PROCTOR_SANDBOX does not hide a bad sandbox value in the file."""
        home = _edited(tmp_path, stock, "sandbox = false", 'sandbox = "yes"')

        assert _error(home, {"PROCTOR_SANDBOX": "true"}).field == "execution.sandbox"


class TestNumbers:
    @pytest.mark.parametrize(
        ("old", "new", "field"),
        [
            ("confirm_ttl_seconds = 3600", "confirm_ttl_seconds = inf", "confirm_ttl_seconds"),
            ("confirm_ttl_seconds = 3600", "confirm_ttl_seconds = 1e400", "confirm_ttl_seconds"),
            ("confirm_ttl_seconds = 3600", "confirm_ttl_seconds = nan", "confirm_ttl_seconds"),
            ("confirm_ttl_seconds = 3600", "confirm_ttl_seconds = 0", "confirm_ttl_seconds"),
            ("confirm_ttl_seconds = 3600", 'confirm_ttl_seconds = "1"', "confirm_ttl_seconds"),
            ("approval_ttl_seconds = 86400", "approval_ttl_seconds = -5", "approval_ttl_seconds"),
            ("approval_ttl_seconds = 86400", "approval_ttl_seconds = 1e15", "approval_ttl_seconds"),
            (
                "approval_ttl_seconds = 86400",
                "approval_ttl_seconds = 99999999999999",
                "approval_ttl_seconds",
            ),
            ("lease_ttl_seconds = 30", "lease_ttl_seconds = nan", "lease_ttl_seconds"),
            ("step_timeout_seconds = 60", "step_timeout_seconds = inf", "step_timeout_seconds"),
            ("plan_deadline_seconds = 900", "plan_deadline_seconds = -1", "plan_deadline_seconds"),
            ("queue_ttl_seconds = 3600", "queue_ttl_seconds = 0", "queue_ttl_seconds"),
            ("queue_ttl_seconds = 3600", "queue_ttl_seconds = inf", "queue_ttl_seconds"),
            ("queue_ttl_seconds = 3600", 'queue_ttl_seconds = "1h"', "queue_ttl_seconds"),
            ("report_grace_seconds = 60", "report_grace_seconds = 0", "report_grace_seconds"),
            ("report_grace_seconds = 60", "report_grace_seconds = nan", "report_grace_seconds"),
            ("max_attempts = 3", "max_attempts = 1e9", "max_attempts"),
        ],
    )
    def test_an_execution_setting_must_be_finite_and_in_range(
        self, tmp_path, stock, old, new, field
    ):
        """Infinite, NaN, negative, zero or absurdly large durations name their field."""
        error = _error(_edited(tmp_path, stock, old, new))

        assert error.field == f"execution.{field}"
        assert " from " in error.message
        assert error.hint is not None

    @pytest.mark.parametrize(
        ("old", "new", "field"),
        [
            ("checkpoint_every = 1000", "checkpoint_every = inf", "audit.checkpoint_every"),
            ("checkpoint_every = 1000", "checkpoint_every = 0", "audit.checkpoint_every"),
            (
                "checkpoint_interval_seconds = 60",
                "checkpoint_interval_seconds = inf",
                "audit.checkpoint_interval_seconds",
            ),
            (
                "checkpoint_interval_seconds = 60",
                "checkpoint_interval_seconds = -1",
                "audit.checkpoint_interval_seconds",
            ),
            ("rotate_every_days = 0", "rotate_every_days = -1", "keys.rotate_every_days"),
            ("rotate_every_days = 0", "rotate_every_days = 1e10", "keys.rotate_every_days"),
            ("agentic_max = 10", "agentic_max = inf", "thresholds.agentic_max"),
            ("agentic_max = 10", 'agentic_max = "10"', "thresholds.agentic_max"),
            ("hybrid_max = 15", "hybrid_max = 26", "thresholds.hybrid_max"),
            ("agentic_max = 10", "agentic_max = 15", "thresholds.agentic_max"),
        ],
    )
    def test_audit_key_and_threshold_settings_are_checked(self, tmp_path, stock, old, new, field):
        """Checkpoint, rotation and threshold numbers are checked the same way."""
        error = _error(_edited(tmp_path, stock, old, new))

        assert error.field == field

    @pytest.mark.parametrize(
        ("table", "field"),
        [
            ("[guards.breaker]\nwindow_seconds = inf", "guards.breaker.window_seconds"),
            ("[guards.anomaly]\ncost_factor = nan", "guards.anomaly.cost_factor"),
            (
                '[[guards.rate_limits]]\nscope = "agent"\nkey = "*"\nlimit = 5\nper_seconds = inf',
                "guards.rate_limits[0].per_seconds",
            ),
        ],
    )
    def test_a_guard_number_must_be_finite(self, tmp_path, stock, table, field):
        """An infinite guard window or factor is refused, naming it."""
        error = _error(_home(tmp_path, stock + "\n" + table + "\n"))

        assert error.field == field

    @pytest.mark.parametrize(
        ("table", "field"),
        [
            (
                '[[guards.budgets]]\nscope = "agent"\nkey = "*"\nlimit = 10.5',
                "guards.budgets[0].limit",
            ),
            (
                '[[guards.rate_limits]]\nscope = "agent"\nkey = "*"\nlimit = 2.5',
                "guards.rate_limits[0].limit",
            ),
            ("[guards.breaker]\ntrials = 2.5", "guards.breaker.trials"),
            ("[guards.anomaly]\ndenials = true", "guards.anomaly.denials"),
        ],
    )
    def test_a_guard_count_must_be_an_integer(self, tmp_path, stock, table, field):
        """A fractional limit, budget or count is refused naming the entry and its key."""
        error = _error(_home(tmp_path, stock + "\n" + table + "\n"))

        assert error.field == field

    def test_zero_step_timeout_and_checkpoint_interval_are_allowed(self, tmp_path, stock):
        """0 means no limit (step timeout) and sign whenever there are new events."""
        text = stock.replace("step_timeout_seconds = 60", "step_timeout_seconds = 0").replace(
            "checkpoint_interval_seconds = 60", "checkpoint_interval_seconds = 0"
        )

        s = load(_home(tmp_path, text), env={})

        assert (s.step_timeout_seconds, s.checkpoint_interval_seconds) == (0.0, 0)


class TestLimits:
    def test_max_param_string_defaults_to_64_kib_and_reaches_the_gateway(self, tmp_path):
        """``[limits] max_param_string`` is read, defaults to 65,536 and sets the gateway's cap."""
        from proctor.bootstrap import open_home

        home = tmp_path / "home"
        init_home(home)
        assert load(home, env={}).max_param_string == 65_536
        text = (home / "config.toml").read_text() + "\n[limits]\nmax_param_string = 100000\n"
        (home / "config.toml").write_text(text)

        assert load(home, env={}).max_param_string == 100_000
        inst = open_home(home)
        try:
            assert inst.gateway.options.limits.max_param_string == 100_000
        finally:
            inst.gateway.store.close()

    @pytest.mark.parametrize("value", ["0", "262145", "1e9", '"64k"', "inf"])
    def test_max_param_string_must_be_within_the_manifest_limit(self, tmp_path, stock, value):
        """A cap of 0, or larger than a manifest may be (256 KiB), is refused naming the key."""
        error = _error(_home(tmp_path, stock + f"\n[limits]\nmax_param_string = {value}\n"))

        assert error.field == "limits.max_param_string"
        assert "262144" in error.message


class TestUnknownKeys:
    def test_a_misspelt_key_suggests_the_known_one(self, tmp_path, stock):
        """``sandbx = true`` under [execution] names the key and suggests sandbox."""
        error = _error(_edited(tmp_path, stock, "sandbox = false", "sandbx = true"))

        assert error.field == "execution.sandbx"
        assert "unknown key 'sandbx'" in error.message
        assert error.hint == "Did you mean 'sandbox'?"

    def test_a_misspelt_section_suggests_the_known_one(self, tmp_path, stock):
        """A misspelt [exection] section names the section and suggests [execution]."""
        error = _error(_edited(tmp_path, stock, "[execution]", "[exection]"))

        assert error.field == "exection"
        assert "unknown section 'exection'" in error.message
        assert error.hint == "Did you mean 'execution'?"

    def test_a_key_in_the_wrong_section_says_where_it_belongs(self, tmp_path, stock):
        """store_prompt under [execution] says it belongs under [audit]."""
        error = _error(_edited(tmp_path, stock, "sandbox = false", "store_prompt = true"))

        assert error.field == "execution.store_prompt"
        assert error.hint == "store_prompt belongs under [audit]."

    def test_an_unrelated_key_lists_the_known_ones(self, tmp_path, stock):
        """With nothing close, the hint lists the section's keys."""
        error = _error(_edited(tmp_path, stock, "[policy]\n", "[policy]\nzzz = 1\n"))

        assert error.field == "policy.zzz"
        assert error.hint == "Known: bundle."

    @pytest.mark.parametrize(
        ("table", "field", "hint"),
        [
            ("[console]\nurll = 'x'", "console.urll", "Did you mean 'url'?"),
            ("[observability]\nlog_fromat = 'json'", "observability.log_fromat", "log_format"),
            ("[guards.breaker]\nwindow_second = 5", "guards.breaker.window_second", "window_"),
            ("[guards]\nreview_sample = 0.1", "guards.review_sample", "review_sample_rate"),
            ("[auth]\njwk = 1", "auth.jwk", "Did you mean 'jwt'?"),
        ],
    )
    def test_every_section_checks_its_keys(self, tmp_path, stock, table, field, hint):
        """Unknown keys in the other sections are refused with a suggestion too."""
        error = _error(_home(tmp_path, stock + "\n" + table + "\n"))

        assert error.field == field
        assert error.hint is not None and hint in error.hint

    def test_agent_tables_are_free_form(self, tmp_path, stock):
        """[agents.<id>] names are any agent id."""
        key = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="
        text = stock + f'\n[agents.any-name_1]\npublic_key = "{key}"\n'

        assert set(load(_home(tmp_path, text), env={}).agent_keys) == {"any-name_1"}


def _catalog(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "catalog.toml"
    path.write_text(
        '[actions."x.do"]\ncategory = "general"\n'
        "baselines = { risk = 1, auditability = 1, ux = 1, recovery = 1, cost = 1 }\n" + body
    )
    return path


class TestCatalogFile:
    def test_booleans_are_read(self, tmp_path):
        """``idempotent = true`` is read as true."""
        (spec,) = load_catalog_file(_catalog(tmp_path, "idempotent = true\n"))

        assert spec.idempotent is True

    @pytest.mark.parametrize("key", ["idempotent", "reversible"])
    def test_a_quoted_boolean_is_refused(self, tmp_path, key):
        """``idempotent = "false"`` would allow retrying a non-idempotent step: refused."""
        with pytest.raises(ConfigError) as caught:
            load_catalog_file(_catalog(tmp_path, f'{key} = "false"\n'))

        assert caught.value.field == f"actions.x.do.{key}"
        assert caught.value.hint is not None and "without quotes" in caught.value.hint

    def test_a_misspelt_key_suggests_the_known_one(self, tmp_path):
        """``idempotant`` names the action and suggests idempotent."""
        with pytest.raises(ConfigError) as caught:
            load_catalog_file(_catalog(tmp_path, "idempotant = true\n"))

        assert caught.value.field == "actions.x.do.idempotant"
        assert caught.value.hint == "Did you mean 'idempotent'?"

    @pytest.mark.parametrize(
        ("body", "field"),
        [
            ("params = 5\n", "actions.x.do.params"),
            ('params = "object"\n', "actions.x.do.params"),
            ("canary = 5\n", "actions.x.do.canary"),
            ("summary = 5\n", "actions.x.do.summary"),
            ('handler = ["a.b:c"]\n', "actions.x.do.handler"),
            ("simulate = 5\n", "actions.x.do.simulate"),
            ("compensate = { a = 1 }\n", "actions.x.do.compensate"),
            ("compensation = 5\n", "actions.x.do.compensation"),
            ("amount_param = 5\n", "actions.x.do.amount_param"),
            ("runner = 5\n", "actions.x.do.runner"),
            ("mask = 5\n", "actions.x.do.mask"),
            ("mask = [1]\n", "actions.x.do.mask[0]"),
        ],
    )
    def test_a_key_of_the_wrong_type_is_a_config_error(self, tmp_path, body, field):
        """A key of the wrong TOML type names it, rather than escape as a TypeError."""
        with pytest.raises(ConfigError) as caught:
            load_catalog_file(_catalog(tmp_path, body))

        assert caught.value.field == field

    def test_baselines_that_are_not_a_table_are_a_config_error(self, tmp_path):
        """``baselines = 5`` names the baselines, rather than escape as a TypeError."""
        path = tmp_path / "catalog.toml"
        path.write_text('[actions."x.do"]\ncategory = "general"\nbaselines = 5\n')

        with pytest.raises(ConfigError) as caught:
            load_catalog_file(path)

        assert caught.value.field == "actions.x.do.baselines"

    def test_a_mask_string_is_not_split_into_characters(self, tmp_path):
        """``mask = "/card"`` is refused: read as a list it masked "/", "c", "a", "r", "d"."""
        with pytest.raises(ConfigError) as caught:
            load_catalog_file(_catalog(tmp_path, 'mask = "/card"\n'))

        assert caught.value.field == "actions.x.do.mask"
        assert caught.value.hint is not None and "square brackets" in caught.value.hint
