package proctor

import rego.v1

outcomes := {"crash.approve": "approve", "crash.confirm": "confirm"}

ttl(action) := 2 if action == "crash.book"

ttl(action) := 0 if action != "crash.book"

step_decision(s) := {
	"outcome": object.get(outcomes, s.action, "execute"),
	"reasons": [sprintf("%v: crash-test policy", [s.action])],
	"approvals": 1,
	"approver_roles": ["finance"],
	"undo_window": 600,
	"rollback_ttl": ttl(s.action),
}

decision := {"steps": {s.id: step_decision(s) | some s in input.steps}, "plan": {}}
