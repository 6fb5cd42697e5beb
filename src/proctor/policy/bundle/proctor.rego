# Proctor's default policy (policy contract version 1, see docs/policy.md).
#
# Entrypoint: data.proctor.decision. Tunables (limits, undo windows, approver groups, the
# category list) live in data.json under data.proctor.settings: change them there, not here.
#
# Every step gets exactly one decision: step_decision is a single else-chain that ends in a
# deny, so a step never matches two rules (a rule conflict fails the whole plan closed) and a
# malformed step is denied rather than left without a decision.
#
# Written for rego-cpp (regopy), where every operation costs microseconds:
# - constants stay in data, loaded once; the input carries only what changes per plan;
# - plan-wide values are comprehensions, which rego-cpp evaluates about twice as fast as
#   rule bodies that iterate with `some`;
# - the orchestrator guard is decided once per query, not once per step.
#
# rego-cpp quirks (regopy 1.5.2) this file avoids:
# - sprintf("%s", [x]) wraps x in quotes when x was computed by a builtin such as concat or
#   upper (and the output is then not valid JSON): join computed strings with concat instead;
# - `some k, v in x` inside a comprehension does not parse, and a parenthesised comprehension
#   head evaluates to an error: bind with `some k; v := x[k]` and name the head;
# - a rule named like a data path (`settings` here) recurses into data.proctor.settings.
#
# plan.deny and plan.adjustments are sets (one entry however many steps match); they come
# out of the engine as JSON arrays.
package proctor

import rego.v1

cfg := data.proctor.settings

# Undefined (so the engine fails closed) when the baseline or the thresholds are malformed.
decision := {
	"steps": steps_out,
	"plan": {
		"deny": plan_deny,
		"adjustments": adjustments,
		"review_sample_rate": review_sample_rate,
	},
} if {
	is_number(adjusted_total)
	is_number(hybrid_max)
}

# --- per-step outcome ------------------------------------------------------------------------

# The most frequent categories come first: each failed branch costs a comparison.
step_decision(s, cat) := d if {
	cat == "read"
	d := _execute("read-only look-up", 0)
} else := d if {
	cat == "booking"
	w := cfg.booking_undo_window
	d := _execute(sprintf("cancellable booking: the user may undo it within %v s", [w]), w)
} else := d if {
	cat == "payment"
	_payment_within(s)
	d := _execute(
		sprintf("payment of %v is within auto_payment_max %v", [s.amount, cfg.auto_payment_max]),
		_payment_undo(s),
	)
} else := d if {
	cat == "payment"
	d := _approve(
		sprintf("payment of %v exceeds auto_payment_max %v", [s.amount, cfg.auto_payment_max]),
		cfg.approver_groups.payment,
		true, # step_up
		false, # dry_run
	)
} else := d if {
	cat == "general"
	d := _execute("low-impact action with no external commitment", 0)
} else := d if {
	cat == "communication"
	s.params.external == true
	d := _confirm("external message sent on the user's behalf: the user confirms")
} else := d if {
	cat == "communication"
	d := _execute("internal message: nothing leaves the organisation", 0)
} else := d if {
	cat == "subscription"
	d := _confirm("changes a customer's payment or subscription: the customer confirms")
} else := d if {
	cat == "purchase"
	_purchase_within(s)
	d := _execute(
		sprintf("purchase order of %v is within po_auto_max %v", [s.amount, cfg.po_auto_max]),
		0,
	)
} else := d if {
	cat == "purchase"
	d := _approve(
		sprintf("purchase order of %v exceeds po_auto_max %v", [s.amount, cfg.po_auto_max]),
		cfg.approver_groups.purchase,
		false,
		false,
	)
} else := d if {
	cat == "production"
	s.params.environment == "staging"
	d := object.union(
		_execute("change to staging, not production: runs after a dry run", 0),
		{"dry_run": true},
	)
} else := d if {
	cat == "production"
	roles := cfg.approver_groups.production
	d := _approve(
		concat("", ["change to a production system: a dry run, then approval by ", concat(", ", roles)]),
		roles,
		false,
		true, # dry_run
	)
} else := d if {
	cat in cfg.high_risk_categories
	roles := cfg.approver_groups[cat]
	d := _approve(
		concat("", [sprintf("%v (%v): approval by ", [cfg.categories[cat], cat]), concat(", ", roles)]),
		roles,
		false,
		false,
	)
} else := _deny(sprintf("unknown category %v: fail closed", [cat])) if {
	not cfg.categories[cat]
} else := _deny("the step matches no rule (a field is missing or malformed): fail closed")

# A payment executes on its own only with a numeric amount within the limit; anything else
# (over the limit, missing, not a number) goes to approval.
_payment_within(s) if {
	is_number(s.amount)
	s.amount <= cfg.auto_payment_max
}

_payment_undo(s) := cfg.payment_undo_window if s.reversible == true else := 0

_purchase_within(s) if {
	is_number(s.amount)
	s.amount <= cfg.po_auto_max
}

# --- orchestrator guard ----------------------------------------------------------------------

# Above hybrid_max the plan is orchestrator-first: a step that would execute or wait for the
# user's confirmation needs a supervisor's approval instead.
steps_out := {s.id: _guard(step_decision(s, object.get(s, "category", null))) |
	some s in input.steps
} if {
	adjusted_total > hybrid_max
} else := {s.id: step_decision(s, object.get(s, "category", null)) | some s in input.steps}

_guard(d) := d if {
	d.outcome in {"approve", "deny"}
} else := object.union(d, {
	"outcome": "approve",
	"approvals": 1,
	"approver_roles": cfg.approver_groups.default,
	"reasons": array.concat(d.reasons, [_guard_reason]),
})

_guard_reason := concat("", [
	sprintf(
		"adjusted total %v exceeds hybrid_max %v: orchestrator-first, approval by ",
		[adjusted_total, hybrid_max],
	),
	concat(", ", cfg.approver_groups.default),
])

hybrid_max := h if {
	h := input.context.thresholds.hybrid_max
} else := cfg.default_hybrid_max

# The baseline's total after the adjustments, each axis clamped to 1..5 (the deltas of an
# axis are summed, then clamped). Undefined when an axis is missing, and then so is the
# decision. Only the adjusted axes are visited.
adjusted_total := _base_total if {
	count(adjustments) == 0
} else := t if {
	b := input.baseline
	deltas := {a.axis: sum([x.delta | some x in adjustments; x.axis == a.axis]) | some a in adjustments}
	t := _base_total + sum([g | some axis; d := deltas[axis]; g := _clamp(b[axis] + d) - b[axis]])
}

_base_total := t if {
	b := input.baseline
	t := (((b.risk + b.auditability) + b.ux) + b.recovery) + b.cost
}

_clamp(x) := 1 if x < 1 else := 5 if x > 5 else := x

# --- plan level ------------------------------------------------------------------------------

# Flow rule: personal data must not leave by external email in the same plan. (A set: the
# message appears once however many steps match.)
plan_deny := {"a plan that reads personal data must not also send external email" |
	some t in input.steps
	t.category == "communication"
	t.params.external == true
	some s in input.steps
	s.category in cfg.personal_data_categories
}

# One risk adjustment however many payments exceed the limit.
adjustments := {a |
	some s in input.steps
	s.category == "payment"
	not _payment_within(s)
	a := {
		"axis": "risk",
		"delta": cfg.payment_over_limit_risk_delta,
		"reason": sprintf("a payment exceeds auto_payment_max %v", [cfg.auto_payment_max]),
	}
}

# Auto-executed purchase orders are sampled for post-hoc review.
review_sample_rate := cfg.review_sample_rate if {
	[1 | some s in input.steps; s.category == "purchase"; _purchase_within(s)] != []
} else := 0

# --- decision constructors -------------------------------------------------------------------

_execute(reason, undo_window) := {
	"outcome": "execute",
	"reasons": [reason],
	"approvals": 0,
	"approver_roles": [],
	"dry_run": false,
	"step_up": false,
	"undo_window": undo_window,
	"rollback_ttl": 0,
}

_confirm(reason) := {
	"outcome": "confirm",
	"reasons": [reason],
	"approvals": 0,
	"approver_roles": [],
	"dry_run": false,
	"step_up": false,
	"undo_window": 0,
	"rollback_ttl": 0,
}

_approve(reason, roles, step_up, dry_run) := {
	"outcome": "approve",
	"reasons": [reason],
	"approvals": 1,
	"approver_roles": roles,
	"dry_run": dry_run,
	"step_up": step_up,
	"undo_window": 0,
	"rollback_ttl": 0,
}

_deny(reason) := {
	"outcome": "deny",
	"reasons": [reason],
	"approvals": 0,
	"approver_roles": [],
	"dry_run": false,
	"step_up": false,
	"undo_window": 0,
	"rollback_ttl": 0,
}
