"""The ``refund`` action's handler as a ``proctor serve`` subprocess imports it (catalog.toml
``handler = "refund_tools:refund"``; the tests put this directory on its PYTHONPATH).

Each call is appended to the JSON-lines file named by ``REFUND_CALLS``, so a test in another
process can tell how many times, and with which idempotency key, the server ran the tool.
"""

from __future__ import annotations

import json
import os
from typing import Any


def refund(params: dict[str, Any], call: Any) -> dict[str, Any]:
    """Refund ``params["amount"]`` to ``params["customer"]`` and record the call."""
    with open(os.environ["REFUND_CALLS"], "a", encoding="utf-8") as out:
        out.write(
            json.dumps(
                {
                    "amount": params["amount"],
                    "customer": params["customer"],
                    "key": call.idempotency_key,
                }
            )
            + "\n"
        )
    return {"refunded": params["amount"], "customer": params["customer"], "by": "server"}
