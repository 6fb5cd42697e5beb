package refund_test

import rego.v1

decide(steps) := d if {
	d := data.proctor.decision with input.steps as steps
}

test_small_refund_executes if {
	d := decide([{"id": "s1", "amount": 50, "params": {}}])
	d.steps.s1.outcome == "execute"
}

test_edge_100_needs_finance if {
	d := decide([{"id": "s1", "amount": 100, "params": {}}])
	d.steps.s1.outcome == "approve"
	d.steps.s1.approver_roles == ["finance"]
}

test_edge_9999_needs_finance if {
	d := decide([{"id": "s1", "amount": 9999, "params": {}}])
	d.steps.s1.outcome == "approve"
}

test_10000_is_denied if {
	d := decide([{"id": "s1", "amount": 10000, "params": {}}])
	d.steps.s1.outcome == "deny"
}

test_missing_amount_is_denied if {
	d := decide([{"id": "s1", "params": {}}])
	d.steps.s1.outcome == "deny"
}

test_null_amount_is_denied if {
	d := decide([{"id": "s1", "amount": null, "params": {}}])
	d.steps.s1.outcome == "deny"
}
