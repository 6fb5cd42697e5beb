"""The policy adapter: Rego bundles evaluated in-process with regopy (rego-cpp).

``RegoPolicyEngine`` implements the ``PolicyEngine`` port (``proctor.core.ports``): it
compiles a bundle once (``from_directory`` or ``from_sources``) and answers
``data.proctor.decision`` per plan, failing closed with ``PolicyEngineError``.
``run_policy_tests`` runs a bundle's ``test_*`` rules, and ``default_bundle_path`` locates
the default policy shipped in ``proctor/policy/bundle``. The input and output contract is
``docs/policy.md``.
"""

from proctor.policy.bundle_io import bundle_version, default_bundle_path
from proctor.policy.engine import ENTRYPOINT, RegoPolicyEngine
from proctor.policy.policy_tests import PolicyTestResult, run_policy_tests

__all__ = [
    "ENTRYPOINT",
    "PolicyTestResult",
    "RegoPolicyEngine",
    "bundle_version",
    "default_bundle_path",
    "run_policy_tests",
]
