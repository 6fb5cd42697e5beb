# The peer benchmark's policy (bench/peer.py): the same three rules as the AGT YAML in
# bench/peer_agt.py, for the one action of the benchmark, `bench.refund(amount, customer)`.
#
#   amount < 100            -> execute (AGT: allow)
#   amount >= 10000         -> deny
#   otherwise               -> approve by one `finance` approver (AGT: require_approval)
#
# A missing or non-numeric amount is denied (fail closed). AGT's condition language reads a
# missing value as 0 and so allows it: here Proctor is stricter, at the cost of one
# is_number test per step.
package proctor

import rego.v1

decision := {"steps": {s.id: step(s) | some s in input.steps}}

step(s) := d if {
	a := s.amount
	is_number(a)
	a < 100
	d := {"outcome": "execute", "reasons": ["refund under 100"]}
} else := d if {
	a := s.amount
	is_number(a)
	a >= 10000
	d := {"outcome": "deny", "reasons": ["refunds of 10000 or more are not allowed"]}
} else := d if {
	is_number(s.amount)
	d := {"outcome": "approve", "reasons": ["refund of 100 to 9999 needs finance"], "approver_roles": ["finance"]}
} else := {"outcome": "deny", "reasons": ["refund without a numeric amount: fail closed"]}
