"""RegoPolicyEngine: compiling, versioning, evaluating fail-closed, and running policy tests."""

from __future__ import annotations

import enum
import hashlib
import json
import shutil
import threading
from pathlib import Path
from types import MappingProxyType

import pytest
import regopy

from proctor.core.canonical import canonical
from proctor.errors import InvalidPolicyError, PolicyEngineError
from proctor.policy import (
    ENTRYPOINT,
    PolicyTestResult,
    RegoPolicyEngine,
    default_bundle_path,
    run_policy_tests,
)
from proctor.policy.native import _escaped_copy, _Native, _native

HEAD = "package proctor\n\nimport rego.v1\n\n"
ECHO = HEAD + 'decision := {"echo": input.value, "limit": data.proctor.settings.limit}\n'


def write_bundle(root: Path, files: dict[str, str]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    return root


def expected_version(files: dict[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name] + b"\0")
    return "sha256:" + h.hexdigest()


class TestDefaultBundlePath:
    def test_points_at_the_packaged_bundle(self) -> None:
        """The default bundle directory holds the policy, its data and its tests."""
        path = default_bundle_path()
        assert path.is_dir()
        assert {"proctor.rego", "data.json", "proctor_test.rego"} <= {
            p.name for p in path.iterdir()
        }
        assert ENTRYPOINT == "proctor/decision"


class TestFromSources:
    def test_evaluates_modules_and_data(self) -> None:
        """A module and a data document compile and answer data.proctor.decision."""
        engine = RegoPolicyEngine.from_sources(
            {"p.rego": ECHO}, {"proctor": {"settings": {"limit": 5}}}
        )
        assert engine.evaluate({"value": 3}) == {"echo": 3, "limit": 5}

    def test_version_covers_names_sources_and_canonical_data(self) -> None:
        """The version is SHA-256 over name, NUL, bytes, NUL in name order, data canonical."""
        data = {"proctor": {"settings": {"limit": 5}}}
        engine = RegoPolicyEngine.from_sources({"p.rego": ECHO}, data)
        assert engine.version == expected_version(
            {"p.rego": ECHO.encode(), "data.json": canonical(data)}
        )

    def test_version_changes_with_the_data(self) -> None:
        """Changing a tunable changes the version."""
        a = RegoPolicyEngine.from_sources({"p.rego": ECHO}, {"proctor": {"settings": {"limit": 5}}})
        b = RegoPolicyEngine.from_sources({"p.rego": ECHO}, {"proctor": {"settings": {"limit": 6}}})
        assert a.version != b.version

    def test_parse_error_names_the_file_and_line(self) -> None:
        """Rego that does not parse raises InvalidPolicyError with file, line and column."""
        bad = HEAD + "decision := {{ if\n"
        with pytest.raises(InvalidPolicyError, match=r"bad\.rego:5:") as info:
            RegoPolicyEngine.from_sources({"good.rego": ECHO, "bad.rego": bad})
        assert info.value.details["file"] == "bad.rego"
        assert info.value.code == "invalid_policy"

    def test_build_error_names_the_file(self) -> None:
        """A bundle that parses but does not build (two defaults) names the file."""
        src = HEAD + "default decision := 1\n\ndefault decision := 2\n"
        with pytest.raises(InvalidPolicyError, match=r"two\.rego.*Multiple default rules"):
            RegoPolicyEngine.from_sources({"two.rego": src})

    def test_data_that_is_not_json_is_invalid(self) -> None:
        """Data that cannot be written as canonical JSON is an invalid policy."""
        with pytest.raises(InvalidPolicyError, match="data"):
            RegoPolicyEngine.from_sources({"p.rego": ECHO}, {"x": float("nan")})

    def test_test_modules_are_not_compiled(self) -> None:
        """A *_test.rego module is left out of the engine, even one that would crash it."""
        policy = HEAD + 'limit := 15\n\ndecision := {"limit": limit, "echo": input.value}\n'
        crashing = (
            "package proctor_test\n\nimport rego.v1\n\n"
            'test_x if { data.proctor.decision.echo == 1 with input as {"value": 1} }\n'
        )
        engine = RegoPolicyEngine.from_sources({"p.rego": policy, "p_test.rego": crashing})
        assert engine.evaluate({"value": 1}) == {"limit": 15, "echo": 1}

    def test_only_tests_is_invalid(self) -> None:
        """A bundle with nothing but tests has no policy."""
        with pytest.raises(InvalidPolicyError, match="no Rego module"):
            RegoPolicyEngine.from_sources({"p_test.rego": "package p_test\n"})


class TestFromDirectory:
    def test_loads_rego_and_data(self, tmp_path: Path) -> None:
        """The directory's modules and data.json are compiled together."""
        root = write_bundle(
            tmp_path / "b",
            {"p.rego": ECHO, "data.json": '{"proctor": {"settings": {"limit": 7}}}'},
        )
        engine = RegoPolicyEngine.from_directory(root)
        assert engine.evaluate({"value": "x"}) == {"echo": "x", "limit": 7}
        assert engine.origin == str(root)

    def test_version_is_over_the_files(self, tmp_path: Path) -> None:
        """The version hashes every .rego file (tests too) and data.json, and nothing else."""
        files = {
            "p.rego": ECHO,
            "p_test.rego": "package p_test\n",
            "data.json": '{"proctor": {"settings": {"limit": 7}}}',
        }
        root = write_bundle(tmp_path / "b", {**files, "README.md": "notes"})
        (root / "sub").mkdir()
        (root / "sub" / "x.rego").write_text("package x\n")
        engine = RegoPolicyEngine.from_directory(root)
        assert engine.version == expected_version({k: v.encode() for k, v in files.items()})

    def test_version_changes_when_a_file_changes(self, tmp_path: Path) -> None:
        """Editing one byte of a module changes the version; reloading the same bytes does not."""
        root = write_bundle(
            tmp_path / "b", {"p.rego": ECHO, "data.json": '{"proctor": {"settings": {}}}'}
        )
        before = RegoPolicyEngine.from_directory(root).version
        assert RegoPolicyEngine.from_directory(root).version == before
        (root / "p.rego").write_text(ECHO + "# comment\n")
        assert RegoPolicyEngine.from_directory(root).version != before

    def test_default_bundle_loads(self) -> None:
        """The packaged default bundle compiles and has a sha256 version."""
        engine = RegoPolicyEngine.from_directory(default_bundle_path())
        assert engine.version.startswith("sha256:")
        assert len(engine.version) == len("sha256:") + 64

    def test_missing_directory_is_invalid(self, tmp_path: Path) -> None:
        """A path that is not a directory raises InvalidPolicyError."""
        with pytest.raises(InvalidPolicyError, match="not a directory"):
            RegoPolicyEngine.from_directory(tmp_path / "nope")

    def test_bad_data_json_names_the_file(self, tmp_path: Path) -> None:
        """A data.json that is not JSON is reported as the file at fault."""
        root = write_bundle(tmp_path / "b", {"p.rego": ECHO, "data.json": "{not json"})
        with pytest.raises(InvalidPolicyError, match=r"data\.json") as info:
            RegoPolicyEngine.from_directory(root)
        assert info.value.details["file"] == "data.json"

    def test_data_json_must_be_an_object(self, tmp_path: Path) -> None:
        """A data.json holding an array is rejected."""
        root = write_bundle(tmp_path / "b", {"p.rego": ECHO, "data.json": "[1]"})
        with pytest.raises(InvalidPolicyError, match="JSON object"):
            RegoPolicyEngine.from_directory(root)

    def test_bad_rego_names_the_file(self, tmp_path: Path) -> None:
        """A module that does not parse is named in the error."""
        root = write_bundle(tmp_path / "b", {"a.rego": ECHO, "b.rego": "not rego at all\n"})
        with pytest.raises(InvalidPolicyError, match=r"b\.rego"):
            RegoPolicyEngine.from_directory(root)


class TestEvaluateFailsClosed:
    def test_undefined_decision_raises(self) -> None:
        """A decision whose conditions are not met is undefined: PolicyEngineError."""
        engine = RegoPolicyEngine.from_sources({"p.rego": HEAD + "decision := 1 if input.ok\n"})
        assert engine.evaluate({"ok": True}) == 1
        with pytest.raises(PolicyEngineError, match="undefined"):
            engine.evaluate({"ok": False})

    def test_missing_decision_rule_raises(self) -> None:
        """A bundle without data.proctor.decision compiles but every evaluation fails."""
        engine = RegoPolicyEngine.from_sources({"p.rego": HEAD + "allow := true\n"})
        with pytest.raises(PolicyEngineError, match="undefined"):
            engine.evaluate({})

    def test_rule_conflict_raises(self) -> None:
        """Two values for one complete rule (printed as <error>) raise PolicyEngineError."""
        src = HEAD + "decision := 1 if input.x > 1\n\ndecision := 2 if input.x > 2\n"
        engine = RegoPolicyEngine.from_sources({"p.rego": src})
        assert engine.evaluate({"x": 2}) == 1
        with pytest.raises(PolicyEngineError, match="multiple outputs"):
            engine.evaluate({"x": 3})

    def test_conflict_across_modules_raises(self) -> None:
        """Two modules defining the decision differently fail at evaluation."""
        engine = RegoPolicyEngine.from_sources(
            {"a.rego": HEAD + "decision := 1\n", "b.rego": HEAD + "decision := 2\n"}
        )
        with pytest.raises(PolicyEngineError):
            engine.evaluate({})

    def test_unknown_function_raises(self) -> None:
        """A call to a function that does not exist fails at evaluation, not silently."""
        engine = RegoPolicyEngine.from_sources({"p.rego": HEAD + "decision := nosuch(1)\n"})
        with pytest.raises(PolicyEngineError, match="nosuch"):
            engine.evaluate({})

    def test_recursion_raises(self) -> None:
        """A rule that depends on itself fails at evaluation."""
        src = HEAD + "decision := x if { x := data.proctor.decision }\n"
        engine = RegoPolicyEngine.from_sources({"p.rego": src})
        with pytest.raises(PolicyEngineError, match=r"[Rr]ecursion"):
            engine.evaluate({})

    def test_builtin_error_raises(self) -> None:
        """A builtin error is an engine error (strict builtin errors), not an undefined value."""
        engine = RegoPolicyEngine.from_sources(
            {"p.rego": HEAD + "decision := to_number(input.n)\n"}
        )
        assert engine.evaluate({"n": "12"}) == 12
        with pytest.raises(PolicyEngineError):
            engine.evaluate({"n": "twelve"})

    def test_input_that_is_not_json_raises(self) -> None:
        """Sets, NaN, non-string keys and huge integers are rejected before evaluation."""
        engine = RegoPolicyEngine.from_sources({"p.rego": HEAD + "decision := input\n"})
        for bad in ({"s": {1, 2}}, {"f": float("nan")}, {1: "x"}, {"n": 2**64}):
            with pytest.raises(PolicyEngineError, match="JSON-shaped"):
                engine.evaluate(bad)  # type: ignore[arg-type]
        assert engine.evaluate({"ok": 1}) == {"ok": 1}  # still usable afterwards


class Colour(enum.StrEnum):
    RED = "red"


@pytest.fixture(scope="module")
def echo() -> RegoPolicyEngine:
    src = HEAD + 'decision := {"value": input.value, "is_quote": input.value == "a\\"b"}\n'
    return RegoPolicyEngine.from_sources({"p.rego": src})


class TestInputConversion:
    @pytest.mark.parametrize(
        "value",
        [
            'a"b',
            "back\\slash",
            "line\nbreak\ttab\x01",
            "é ü 日本 🎉",
            "",
            0,
            -(2**63),
            2**63 - 1,
            1.5,
            True,
            None,
            [1, "two", [3], {"four": 4}],
            {"nested": {"k": ["v"]}, 'q"k': 1},
        ],
    )
    def test_values_round_trip(self, echo: RegoPolicyEngine, value: object) -> None:
        """JSON values, including strings that need escaping, come back unchanged."""
        assert echo.evaluate({"value": value})["value"] == value

    def test_escaped_string_compares_equal_to_the_literal(self, echo: RegoPolicyEngine) -> None:
        """A quote in the input matches the same string written in Rego."""
        assert echo.evaluate({"value": 'a"b'})["is_quote"] is True

    def test_other_mappings_sequences_and_subclasses(self, echo: RegoPolicyEngine) -> None:
        """Mapping proxies, tuples and str enums are converted to plain JSON."""
        value = MappingProxyType({"t": (1, 2), "e": Colour.RED})
        assert echo.evaluate({"value": value})["value"] == {"t": [1, 2], "e": "red"}


class TestSlowInputPath:
    def test_escaped_copy_escapes_strings_and_keys(self) -> None:
        """The fallback converter stores strings as rego-cpp's JSON parser would."""
        value = {'k"': ['a"b', "n\n", 1, None, True, 1.5, (2,)]}
        assert _escaped_copy(value) == {'k\\"': ['a\\"b', "n\\n", 1, None, True, 1.5, [2]]}

    def test_escaped_copy_round_trips_through_regopy(self) -> None:
        """regopy.Input of the escaped copy gives the original strings back."""
        interpreter = regopy.Interpreter()
        interpreter.log_level = regopy.LogLevel.NONE
        value = {"s": 'a"b\\c\nd', "n": [1, 2.5, None]}
        interpreter.set_input(regopy.Input(_escaped_copy(value)))
        assert json.loads(str(interpreter.query("input")))["expressions"] == [value]

    @pytest.mark.parametrize("bad", [{1, 2}, float("inf"), {1: "x"}, 2**64, b"bytes"])
    def test_escaped_copy_rejects_non_json(self, bad: object) -> None:
        """Values JSON cannot hold are rejected by the fallback converter too."""
        with pytest.raises((TypeError, ValueError, OverflowError)):
            _escaped_copy({"v": bad})


def _with_native(engine: RegoPolicyEngine, path: str) -> RegoPolicyEngine:
    """Switch an engine to one evaluation path: cffi, ctypes, or regopy's Python API."""
    if path == "regopy":
        engine._native = None
        return engine
    native = _native() if path == "cffi" else _Native(use_cffi=False)
    assert native.available
    assert native.kind == path
    engine._native = native
    engine._rego_ptr = native.pointer(engine._interpreter._impl)
    engine._bundle_ptr = native.pointer(engine._bundle._impl)
    return engine


@pytest.mark.parametrize("path", ["cffi", "ctypes", "regopy"])
class TestEvaluationPaths:
    """Every way evaluate can reach rego-cpp gives the same answers and fails closed alike."""

    def test_values_round_trip(self, path: str) -> None:
        src = HEAD + 'decision := {"value": input.value, "is_quote": input.value == "a\\"b"}\n'
        engine = _with_native(RegoPolicyEngine.from_sources({"p.rego": src}), path)
        value = {"s": 'a"b\\c\nd', "n": [1, -(2**63), 2.5, None, True], "e": {}, "t": (1,)}
        assert engine.evaluate({"value": value})["value"] == value | {"t": [1]}
        assert engine.evaluate({"value": 'a"b'})["is_quote"] is True

    def test_undefined_conflict_and_errors_fail_closed(self, path: str) -> None:
        cases = {
            "undefined": HEAD + "decision := 1 if input.ok\n",
            "multiple outputs": HEAD + "decision := 1 if input.x\n\ndecision := 2 if input.x\n",
            "nosuch": HEAD + "decision := nosuch(1)\n",
            "[Rr]ecursion": HEAD + "decision := x if { x := data.proctor.decision }\n",
        }
        for message, src in cases.items():
            engine = _with_native(RegoPolicyEngine.from_sources({"p.rego": src}), path)
            with pytest.raises(PolicyEngineError, match=message):
                engine.evaluate({"x": True})

    def test_input_that_is_not_json_fails_closed(self, path: str) -> None:
        engine = RegoPolicyEngine.from_sources({"p.rego": HEAD + "decision := input\n"})
        engine = _with_native(engine, path)
        for bad in ({"s": {1, 2}}, {"f": float("nan")}, {1: "x"}, {"n": 2**64}):
            with pytest.raises(PolicyEngineError, match="JSON-shaped"):
                engine.evaluate(bad)  # type: ignore[arg-type]
        assert engine.evaluate({"ok": 1}) == {"ok": 1}

    def test_default_bundle_agrees(self, path: str) -> None:
        engine = _with_native(RegoPolicyEngine.from_directory(default_bundle_path()), path)
        reference = RegoPolicyEngine.from_directory(default_bundle_path())
        baseline = {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}
        steps = [
            {"id": "a", "category": "payment", "amount": 180000, "params": {}},
            {"id": "b", "category": "booking", "params": {}},
        ]
        value = {"steps": steps, "baseline": baseline, "context": {}}
        assert engine.evaluate(value) == reference.evaluate(value)


class TestDecisionText:
    def test_integers_beyond_64_bits_are_parsed(self) -> None:
        """An output integer orjson refuses (beyond 64 bits) is parsed by the json fallback."""
        src = HEAD + "decision := 4 * 9223372036854775807\n"
        engine = RegoPolicyEngine.from_sources({"p.rego": src})
        assert engine.evaluate({}) == 4 * (2**63 - 1)


class TestThreadSafety:
    def test_concurrent_evaluations_agree(self) -> None:
        """Threads sharing one engine each get the answer for their own input."""
        engine = RegoPolicyEngine.from_directory(default_bundle_path())
        baseline = {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}
        errors: list[str] = []

        def work(n: int) -> None:
            for i in range(60):
                count = 1 + (n + i) % 3
                steps = [
                    {"id": f"s{k}", "category": "read", "params": {}, "amount": 0}
                    for k in range(count)
                ]
                out = engine.evaluate({"steps": steps, "baseline": baseline, "context": {}})
                if len(out["steps"]) != count:
                    errors.append(f"thread {n}: {len(out['steps'])} != {count}")

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []


class TestRunPolicyTests:
    def test_default_bundle_passes(self) -> None:
        """Every test_ rule of the default bundle passes."""
        results = run_policy_tests(default_bundle_path())
        assert len(results) >= 20
        failed = [r for r in results if not r.passed]
        assert failed == []
        assert {r.package for r in results} == {"proctor_test"}

    def test_reports_failing_undefined_and_erroring_rules(self, tmp_path: Path) -> None:
        """A false, an undefined and a conflicting test fail; a true one passes."""
        tests = (
            "package proctor_test\n\nimport rego.v1\n\n"
            "test_passes if { data.proctor.decision.limit == 7 with input.value as 1 }\n\n"
            "test_false := false\n\n"
            "test_undefined if { data.proctor.decision.limit == 8 }\n\n"
            "test_conflict := 1 if true\n\n"
            "test_conflict := 2 if true\n"
        )
        root = write_bundle(
            tmp_path / "b",
            {
                "p.rego": ECHO,
                "p_test.rego": tests,
                "data.json": '{"proctor": {"settings": {"limit": 7}}}',
            },
        )
        results = {r.name: r for r in run_policy_tests(root)}
        assert list(results) == ["test_passes", "test_false", "test_undefined", "test_conflict"]
        assert results["test_passes"] == PolicyTestResult("test_passes", "proctor_test", True, None)
        assert results["test_false"].passed is False
        assert results["test_false"].error == "expected true, got [false]"
        assert results["test_undefined"].passed is False
        assert "undefined" in (results["test_undefined"].error or "")
        assert results["test_conflict"].passed is False
        assert "error" in (results["test_conflict"].error or "")

    def test_a_crash_is_reported_not_fatal(self, tmp_path: Path) -> None:
        """A test that crashes rego-cpp fails every test with the crash, and we survive."""
        policy = HEAD + 'limit := 15\n\ndecision := {"limit": limit}\n'
        crashing = (
            "package proctor_test\n\nimport rego.v1\n\n"
            'test_whole_input if { data.proctor.decision.limit == 15 with input as {"x": 1} }\n'
        )
        root = write_bundle(tmp_path / "b", {"p.rego": policy, "p_test.rego": crashing})
        [result] = run_policy_tests(root)
        assert result.passed is False
        assert "rego-cpp crashed" in (result.error or "")

    def test_bundle_without_tests(self, tmp_path: Path) -> None:
        """A bundle with no test_ rule reports nothing."""
        assert run_policy_tests(write_bundle(tmp_path / "b", {"p.rego": ECHO})) == []

    def test_copy_of_default_bundle_detects_a_changed_setting(self, tmp_path: Path) -> None:
        """Changing a tunable in a copy of the bundle makes the tests that pin it fail."""
        root = tmp_path / "bundle"
        shutil.copytree(default_bundle_path(), root)
        data = (root / "data.json").read_text()
        (root / "data.json").write_text(
            data.replace('"booking_undo_window": 900', '"booking_undo_window": 60')
        )
        failed = {r.name for r in run_policy_tests(root) if not r.passed}
        assert "test_booking_executes_with_undo_window" in failed
