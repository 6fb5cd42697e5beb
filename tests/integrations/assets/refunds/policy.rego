# A small policy for the integration tests: small refunds run, refunds of 60 to 99 need the
# customer's confirmation, large ones need finance, huge ones are denied; anything without an
# amount runs.
package proctor

import rego.v1

decision := {"steps": {s.id: step(s) | some s in input.steps}}

step(s) := {"outcome": "deny", "reasons": ["refunds of 10000 or more are not allowed"]} if {
	object.get(s.params, "amount", 0) >= 10000
} else := {
	"outcome": "approve",
	"reasons": ["refunds of 100 or more need finance"],
	"approver_roles": ["finance"],
} if {
	object.get(s.params, "amount", 0) >= 100
} else := {"outcome": "confirm", "reasons": ["refunds of 60 or more need the user's confirmation"]} if {
	object.get(s.params, "amount", 0) >= 60
} else := {"outcome": "execute", "reasons": ["small refund"]}
