package proctor

import rego.v1

# Argument-aware rules for the MCP tests: writes outside the allowed root are denied, reads
# inside it execute, echo asks its user, anything else needs an ops approval.

inside(s) if startswith(object.get(s.params, "path", ""), data.mcp.root)

step_decision(s) := {"outcome": "deny", "reasons": ["a write outside the allowed root"]} if {
	s.action == "mcp.fs.write_file"
	not inside(s)
} else := {"outcome": "execute", "reasons": ["a write inside the allowed root"]} if {
	s.action == "mcp.fs.write_file"
} else := {"outcome": "execute", "reasons": ["a read inside the allowed root"]} if {
	s.category == "read"
	inside(s)
} else := {"outcome": "execute", "reasons": ["the test server"]} if {
	startswith(s.action, "mcp.flaky.")
} else := {"outcome": "execute", "reasons": ["logging is harmless"]} if {
	s.action == "mcp.everything.toggle_simulated_logging"
} else := {"outcome": "confirm", "reasons": ["echo asks its user"]} if {
	s.action == "mcp.everything.echo"
} else := {"outcome": "approve", "reasons": ["needs ops"], "approvals": 1, "approver_roles": ["ops"]}

decision := {"steps": {s.id: step_decision(s) | some s in input.steps}, "plan": {}}
