"""Running a bundle's policy tests (its ``test_*`` rules) in a child process.

Modules named ``*_test.rego`` are policy tests: they count towards the bundle's version but
are not compiled into the engine; ``run_policy_tests`` runs them.

regopy pitfall this module works around (regopy 1.5.2): ``with input as {...}`` on a rule that
refers to other rules crashes rego-cpp (SIGSEGV or SIGABRT) while compiling, which is why
tests are kept out of the engine and run in a child process.

Separate from ``engine`` because it shares nothing with evaluation but the bundle reading and
error summaries of ``proctor.policy.bundle_io``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass

from proctor.policy.bundle_io import _read_sources, _summarise

__all__ = ["PolicyTestResult", "run_policy_tests"]


_PACKAGE = re.compile(r"^package[ \t]+([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)", re.M)
_TEST_RULE = re.compile(r"^(test_[A-Za-z0-9_]*)\b", re.M)
_MARK = "#proctor-policy-test# "

# Runs in a child process so that a rego-cpp crash cannot take the caller down. It reads
# {"modules": [[name, source], ...], "data": text | null, "queries": [...], "entrypoints": [...]}
# on stdin, compiles every test once as a bundle entrypoint (a plain query would recompile
# the whole bundle per test, about 100 ms each) and writes one marked JSON line per test
# (Rego `print` output may share stdout, hence the mark).
_RUNNER = r"""
import json, sys
import regopy
MARK = "#proctor-policy-test# "
req = json.load(sys.stdin)
def emit(obj):
    sys.stdout.write(MARK + json.dumps(obj) + "\n")
    sys.stdout.flush()
rego = regopy.Interpreter()
rego.log_level = regopy.LogLevel.NONE
rego.strict_built_in_errors = True
try:
    for name, source in req["modules"]:
        rego.add_module(name, source)
    if req["data"] is not None:
        rego.add_data_json(req["data"])
except Exception as exc:
    emit({"fatal": str(exc)})
    sys.exit(0)
bundle = None
try:
    built = rego.build(None, req["entrypoints"])
    if built.ok():
        bundle = built
except Exception:
    pass
for i, query in enumerate(req["queries"]):
    try:
        if bundle is not None:
            out = rego.query_bundle_entrypoint(bundle, req["entrypoints"][i])
        else:
            out = rego.query(query)
        if out.ok():
            emit({"i": i, "ok": True, "text": str(out)})
        else:
            node = out.node()
            text = "\n".join(node.at(k).json() for k in range(len(node)))
            emit({"i": i, "ok": False, "text": text})
    except json.JSONDecodeError as exc:
        emit({"i": i, "ok": False, "text": exc.doc})
    except Exception as exc:
        emit({"i": i, "ok": False, "text": "%s: %s" % (type(exc).__name__, exc)})
emit({"done": True})
"""


@dataclass(frozen=True, slots=True)
class PolicyTestResult:
    """The outcome of one ``test_*`` rule of a bundle.

    Attributes:
        name: The rule name, for example ``test_payment_over_limit``.
        package: The Rego package that defines it, for example ``proctor_test``.
        passed: True only when the rule evaluated to exactly ``true``.
        error: Why it failed (undefined, false, an engine error), or None when it passed.
    """

    name: str
    package: str
    passed: bool
    error: str | None = None


def _discover_tests(modules: Mapping[str, str]) -> list[tuple[str, str]]:
    """Return (package, rule) for every ``test_*`` rule, in file order, without duplicates.

    Found with regular expressions, not a Rego parser: the package must be a plain dotted
    name (``package a.b``, not ``package a["b"]``) on a line of its own, and a test rule's
    name must start its line (as ``opa fmt`` writes it). A line starting with ``test_`` inside
    a multi-line raw string would be mistaken for a rule.
    """
    found: dict[tuple[str, str], None] = {}
    for _, source in sorted(modules.items()):
        package = _PACKAGE.search(source)
        if package is None:
            continue
        for rule in _TEST_RULE.finditer(source):
            found[(package.group(1), rule.group(1))] = None
    return list(found)


def _test_verdict(ok: bool, text: str) -> str | None:
    """Return None when a test query printed exactly true, else why it failed."""
    if not ok:
        return f"error: {_summarise(text)}"
    if text == "undefined":
        return "undefined (a condition of the test is not met)"
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError:
        return f"error: {_summarise(text)}"
    if isinstance(parsed, dict) and parsed.get("expressions") == [True]:
        return None
    values = parsed.get("expressions") if isinstance(parsed, dict) else parsed
    return f"expected true, got {json.dumps(values)[:200]}"


def _crash_reason(returncode: int, stderr: str) -> str:
    if returncode < 0:
        try:
            what = f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            what = f"signal {-returncode}"
    else:
        what = f"exit code {returncode}"
    tail = stderr.strip().splitlines()[-1][:200] if stderr.strip() else ""
    return (
        f"rego-cpp crashed ({what}{': ' + tail if tail else ''}); a known trigger is "
        "`with input as {...}` replacing the whole input of a rule that refers to other "
        "rules: replace single fields instead (`with input.steps as [...]`)"
    )


def run_policy_tests(
    directory: str | os.PathLike[str], *, timeout: float = 120.0
) -> list[PolicyTestResult]:
    """Run every ``test_*`` rule of the bundle in ``directory`` and report each.

    All modules (tests included) and ``data.json`` are loaded into one interpreter in a child
    process, and each rule is queried as ``data.<package>.<rule>``; it passes only when the
    result is exactly ``true``. See ``_discover_tests`` for the limits of test discovery.

    Args:
        directory: The bundle directory.
        timeout: Seconds the whole run may take before the remaining tests fail.

    Returns:
        One result per test rule, in file and source order; empty when there is none.

    Raises:
        InvalidPolicyError: when the bundle cannot be read.
    """
    src = _read_sources(directory)
    modules = src.modules
    tests = _discover_tests(modules)
    if not tests:
        return []
    request = {
        "modules": sorted(modules.items()),
        "data": src.data,
        "queries": [f"data.{package}.{rule}" for package, rule in tests],
        "entrypoints": [f"{package.replace('.', '/')}/{rule}" for package, rule in tests],
    }
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
        "PYTHONIOENCODING": "utf-8",
    }
    verdicts: dict[int, str | None] = {}
    fallback: str | None = None
    try:
        proc = subprocess.run(  # noqa: S603 - our own interpreter running a constant script
            [sys.executable, "-c", _RUNNER],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired:
        fallback = f"the policy tests did not finish within {timeout:g} s"
    else:
        done = False
        for line in proc.stdout.splitlines():
            if not line.startswith(_MARK):
                continue
            message = json.loads(line[len(_MARK) :])
            if "fatal" in message:
                fallback = f"the bundle does not load: {_summarise(message['fatal'])}"
            elif "done" in message:
                done = True
            else:
                verdicts[message["i"]] = _test_verdict(message["ok"], message["text"])
        if not done and fallback is None:
            fallback = _crash_reason(proc.returncode, proc.stderr)
    results = []
    for i, (package, rule) in enumerate(tests):
        error = verdicts.get(i, fallback or "not run")
        results.append(PolicyTestResult(rule, package, error is None, error))
    return results
