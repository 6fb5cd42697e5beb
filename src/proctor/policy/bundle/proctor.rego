# Proctor's default policy (policy contract version 1, see docs/policy.md).
#
# Entrypoint: data.proctor.decision. Tunables (limits, undo windows, approver groups, the
# category list) live in data.json under data.proctor.settings: change them there, not here.
#
# Every step gets exactly one decision: step_decision is a single else-chain that ends in a
# deny, so a step never matches two rules (a rule conflict fails the whole plan closed) and a
# malformed step is denied rather than left without a decision. A step decision carries only
# the fields that differ from the contract's defaults (approvals 1 for approve and 0 otherwise,
# no approver roles, no dry run, no step-up, no undo window, no rollback TTL); the plan part
# carries only deny, adjustments and review_sample_rate when they apply.
#
# Written for rego-cpp (regopy 1.5.2), whose VM spends microseconds on every lookup,
# comparison and object insert (measurements in docs/policy.md, "Writing fast policies"):
# - every output field costs (building it and printing it), so defaults are left out;
# - object lookups scan the keys in order: the settings most rules read come first in
#   data.json, and the input puts steps first and id/category/amount first in a step;
# - in a rule body `some s in input.steps` first tests the whole array for truth, which
#   serialises it: bind `steps := input.steps` first (comprehensions do not do this);
# - an else branch written `else := {...} if {...}` builds its value before testing its
#   condition: build values inside the body, after the condition;
# - plan-level rules first ask the (tiny) set of categories in the plan, so a plan without a
#   payment, purchase or message skips their loops.
#
# rego-cpp quirks (regopy 1.5.2) this file avoids:
# - sprintf("%s", [x]) wraps x in quotes when x was computed by a builtin such as concat or
#   upper (and the output is then not valid JSON): join computed strings with concat instead;
# - `some k, v in x` inside a comprehension does not parse, and a parenthesised comprehension
#   head evaluates to an error: bind with `some k; v := x[k]` and name the head;
# - a rule named like a data path (`settings` here) recurses into data.proctor.settings.
package proctor

import rego.v1

cfg := data.proctor.settings

# Undefined (so the engine fails closed) when the baseline or the thresholds are malformed.
decision := {"steps": _policy_steps, "plan": plan_out} if {
	not input.guards
	is_number(adjusted_total)
	is_number(hybrid_max)
} else := {"steps": _guarded_steps, "plan": plan_out} if {
	is_number(adjusted_total)
	is_number(hybrid_max)
}

# --- per-step outcome ------------------------------------------------------------------------

# The most frequent categories come first: each failed branch costs a comparison.
step_decision(s, cat) := d if {
	cat == "read"
	d := {"outcome": "execute", "reasons": ["read-only look-up"]}
} else := d if {
	cat == "booking"
	w := cfg.booking_undo_window
	d := {
		"outcome": "execute",
		"reasons": [sprintf("cancellable booking: the user may undo it within %v s", [w])],
		"undo_window": w,
	}
} else := d if {
	cat == "payment"
	a := s.amount
	_within(a, cfg.auto_payment_max)
	not _payments_over
	d := _payment_execute(s, a)
} else := d if {
	# Within the limit alone (so _payments_over, or the branch above had taken it), but the
	# plan's payments together are not: as one payment of their total would, the step needs
	# finance with step-up (no undo window).
	cat == "payment"
	a := s.amount
	_within(a, cfg.auto_payment_max)
	d := {
		"outcome": "approve",
		"reasons": [
			sprintf("payment of %v is within auto_payment_max %v", [a, cfg.auto_payment_max]),
			_payments_reason,
		],
		"approver_roles": cfg.approver_groups.payment,
		"step_up": true,
	}
} else := d if {
	cat == "payment"
	d := {
		"outcome": "approve",
		"reasons": [sprintf("payment of %v exceeds auto_payment_max %v", [s.amount, cfg.auto_payment_max])],
		"approver_roles": cfg.approver_groups.payment,
		"step_up": true,
	}
} else := d if {
	cat == "general"
	d := {"outcome": "execute", "reasons": ["low-impact action with no external commitment"]}
} else := d if {
	cat == "communication"
	s.params.external == true
	d := {"outcome": "confirm", "reasons": ["external message sent on the user's behalf: the user confirms"]}
} else := d if {
	cat == "communication"
	_internal_message(s.params)
	d := {"outcome": "execute", "reasons": ["internal message: every recipient is at an internal domain"]}
} else := d if {
	cat == "communication"
	d := {"outcome": "confirm", "reasons": ["message to a recipient outside internal_domains (or to none named): the user confirms"]}
} else := d if {
	cat == "subscription"
	d := {"outcome": "confirm", "reasons": ["changes a customer's payment or subscription: the customer confirms"]}
} else := d if {
	cat == "purchase"
	a := s.amount
	_within(a, cfg.po_auto_max)
	d := {"outcome": "execute", "reasons": [sprintf("purchase order of %v is within po_auto_max %v", [a, cfg.po_auto_max])]}
} else := d if {
	cat == "purchase"
	d := {
		"outcome": "approve",
		"reasons": [sprintf("purchase order of %v exceeds po_auto_max %v", [s.amount, cfg.po_auto_max])],
		"approver_roles": cfg.approver_groups.purchase,
	}
} else := d if {
	cat == "production"
	s.params.environment == "staging"
	d := {"outcome": "execute", "reasons": ["change to staging, not production: runs after a dry run"], "dry_run": true}
} else := d if {
	cat == "production"
	roles := cfg.approver_groups.production
	d := {
		"outcome": "approve",
		"reasons": [concat("", ["change to a production system: a dry run, then approval by ", concat(", ", roles)])],
		"approver_roles": roles,
		"dry_run": true,
	}
} else := d if {
	cat in cfg.high_risk_categories
	roles := cfg.approver_groups[cat]
	d := {
		"outcome": "approve",
		"reasons": [concat("", [sprintf("%v (%v): approval by ", [cfg.categories[cat], cat]), concat(", ", roles)])],
		"approver_roles": roles,
	}
} else := d if {
	not cfg.categories[cat]
	d := {"outcome": "deny", "reasons": [sprintf("unknown category %v: fail closed", [cat])]}
} else := {"outcome": "deny", "reasons": ["the step matches no rule (a field is missing or malformed): fail closed"]}

# A payment or purchase executes on its own only with a numeric amount within the limit;
# anything else (over the limit, missing, not a number) goes to approval.
_within(a, max) if {
	is_number(a)
	a <= max
}

# A message is internal only when its recipients say so, never because the agent says so: it
# names at least one recipient (params to, cc, bcc: an address or a list of addresses), and
# each is one address (exactly one "@") whose domain, in lower case, is in internal_domains.
# The agent's `external` flag may only make a message external. Anything else (a display
# name, two addresses in one string, a recipient that is not a string, no recipient at all)
# counts as external: fail closed.
#
# The common case first, for ~60 µs less than the general one: one address in `to`, no
# copies, its domain as written. (Measured against the flag alone: an internal message costs
# ~80 µs more, an external one ~200 µs, and it waits for its user anyway.)
_internal_message(p) if {
	to := p.to
	is_string(to)
	not p.cc
	not p.bcc
	parts := split(to, "@")
	count(parts) == 2
	parts[1] in cfg.internal_domains
} else if {
	rs := [r | some k in ["to", "cc", "bcc"]; v := p[k]; some r in _addresses(v)]
	count(rs) > 0
	every r in rs {
		_internal_address(r)
	}
}

# A recipient field's addresses; a value that is neither a string nor an array becomes one
# address that is not internal (null), so it is not silently skipped.
_addresses(v) := [v] if {
	is_string(v)
} else := v if {
	is_array(v)
} else := [null]

_internal_address(r) if {
	is_string(r)
	parts := split(lower(r), "@")
	count(parts) == 2
	parts[1] in cfg.internal_domains
}

_external_message(p) if {
	p.external == true
} else if {
	not _internal_message(p)
}

# Only a reversible payment gets an undo window.
_payment_execute(s, a) := d if {
	s.reversible == true
	d := {
		"outcome": "execute",
		"reasons": [sprintf("payment of %v is within auto_payment_max %v", [a, cfg.auto_payment_max])],
		"undo_window": cfg.payment_undo_window,
	}
} else := {
	"outcome": "execute",
	"reasons": [sprintf("payment of %v is within auto_payment_max %v", [a, cfg.auto_payment_max])],
}

# --- guards ---------------------------------------------------------------------------------

# input.guards is present only when a guard applies to the plan (docs/guards.md): without it
# `decision` takes the rules' own step decisions, for the price of one lookup. The gateway
# enforces every guard exactly in the decide transaction as well; these rules put the guards'
# view in the policy's reasons and let a custom policy be stricter (never laxer) about them.
# Every rule in the bundle costs each decision a little (~0.4 µs), guards or not: keep this
# part small.
_guarded_steps := {s.id: _guarded(s, d) | some s in input.steps; d := _policy_steps[s.id]}

# A kill switch or the agent's whitelist denies every step; otherwise budgets, breakers and
# the user's autonomy level each may raise a step's outcome, in that order.
_guarded(s, d) := out if {
	count(_guard_stops) > 0
	out := {"outcome": "deny", "reasons": array.concat(d.reasons, _guard_stops)}
} else := _autonomy_step(s, _breaker_step(s, _budget_step(s, d)))

_guard_stops := array.concat(
	[concat("", ["kill switch ", k, " is engaged"]) | some k in input.guards.kill],
	[r | input.guards.whitelisted == false; r := "an action of the plan is outside the agent's whitelist"],
)

# Budgets this step spends under and the plan would exceed: deny when the budget says so or
# data's budget_exceeded is "deny", otherwise approval.
_budget_step(s, d) := out if {
	denying := [b | some b in input.guards.over_budget; s.id in b.steps; _budget_denies(b)]
	count(denying) > 0
	out := {"outcome": "deny", "reasons": array.concat(d.reasons, [_budget_reason(denying[0])])}
} else := out if {
	over := [b | some b in input.guards.over_budget; s.id in b.steps]
	count(over) > 0
	out := _approval(d, _budget_reason(over[0]))
} else := d

_budget_denies(b) if {
	some x in [b.on_exceed, cfg.budget_exceeded]
	x == "deny"
}

_budget_reason(b) := concat("", [
	"budget ", b.budget, " (", b.period, "): ",
	sprintf("%v spent + %v > %v", [b.spent, b.amount, b.limit]),
])

# Raise d to approve (by the default approver group) unless it is approve or deny already.
_approval(d, r) := d if {
	d.outcome in {"approve", "deny"}
} else := out if {
	out := object.union(d, {
		"outcome": "approve",
		"reasons": array.concat(d.reasons, [r]),
		"approver_roles": cfg.approver_groups.default,
	})
}

# An open circuit breaker (the agent's, or the step's action's) turns agentic execution into
# an approval. A half-open one does not: its trial calls are how it closes again.
_breaker_step(s, d) := out if {
	d.outcome == "execute"
	b := input.guards.breakers
	keys := [concat("", ["agent:", input.plan.agent_id]), concat("", ["action:", s.action])]
	opened := [k | some k in keys; b[k] == "open"]
	count(opened) > 0
	out := _approval(d, concat("", ["circuit breaker ", opened[0], " is open: agentic execution is off"]))
} else := d

# The user's autonomy level for the step's action: only auto lets a step execute on its own,
# and with a tolerance (below) only a numeric amount under it; anything else (propose,
# confirm, an unreadable setting) needs the user's confirmation.
_autonomy_step(s, d) := out if {
	d.outcome == "execute"
	a := input.guards.autonomy[s.id]
	not _autonomous(a, s.amount)
	r := concat("", ["the user's autonomy level is ", _level(a), ": the user confirms"])
	out := object.union(d, {"outcome": "confirm", "reasons": array.concat(d.reasons, [r])})
} else := d

_autonomous(a, amount) if {
	a.level == "auto"
	object.get(a, "below", null) == null
} else if {
	a.level == "auto"
	is_number(amount)
	amount < a.below
}

_level(a) := concat("", [a.level, " below ", sprintf("%v", [a.below])]) if {
	is_string(a.level)
	is_number(a.below)
} else := a.level if {
	is_string(a.level)
} else := "unreadable"

# --- orchestrator guard ----------------------------------------------------------------------

# Above hybrid_max the plan is orchestrator-first: a step that would execute or wait for the
# user's confirmation needs a supervisor's approval instead.
_policy_steps := {s.id: step_decision(s, object.get(s, "category", null)) | some s in input.steps} if {
	adjusted_total <= hybrid_max
} else := {s.id: _guard(step_decision(s, object.get(s, "category", null))) | some s in input.steps}

_guard(d) := d if {
	d.outcome == "approve"
} else := d if {
	d.outcome == "deny"
} else := object.union(d, {
	"outcome": "approve",
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

# The baseline's total after the adjustments. The only adjustment is the payment one, on the
# risk axis, clamped to 1..5. Undefined when an axis is missing, and then so is the decision.
adjusted_total := t if {
	_over_limit
	r := input.baseline.risk
	t := (_base_total + min([5, max([1, r + cfg.payment_over_limit_risk_delta])])) - r
} else := _base_total

# input.baseline_total (the sum of the five axes) when the caller passes it, saving five
# lookups and a sum; otherwise computed from input.baseline.
_base_total := t if {
	t := input.baseline_total
} else := t if {
	b := input.baseline
	t := sum([b.risk, b.auditability, b.ux, b.recovery, b.cost])
}

# --- plan level ------------------------------------------------------------------------------

# The categories in the plan: a cheap first test for the plan-level rules below.
_cats := {s.category | some s in input.steps}

_over_limit if {
	_cats.payment
	_payment_over_limit
}

# "one" when a payment is over the limit on its own, "total" when the plan's payments are
# together, else false.
_payment_over_limit := "one" if {
	steps := input.steps
	some s in steps
	s.category == "payment"
	not _within(s.amount, cfg.auto_payment_max)
} else := "total" if {
	_payments_over
} else := false

# Whether the plan's payments together exceed auto_payment_max: a payment split into steps
# each within the limit routes as one payment of the total would. One sum for every
# currency, as auto_payment_max is one limit for every currency: a sum per currency would let
# a plan split its payments across currencies (or spellings of one). Only positive amounts
# count, so a negative step cannot offset the others; a step without a numeric amount needs
# approval on its own. Always defined (false): an undefined rule is evaluated again at every
# reference. Measured against the rules without it: nothing on a 1-step payment within the
# limit, ~30 µs on a 3-step plan with one payment, ~3 µs on a plan without a payment.
_payments_over := true if {
	steps := input.steps
	count(steps) > 1
	_payments_total > cfg.auto_payment_max
} else := false

_payments_total := t if {
	steps := input.steps
	amounts := [s.amount | some s in steps; s.category == "payment"]
	count(amounts) > 1
	t := sum([a | some a in amounts; is_number(a); a > 0])
}

_payments_reason := sprintf(
	"the plan's payments total %v, over auto_payment_max %v: together they need the approval one payment of that total would",
	[_payments_total, cfg.auto_payment_max],
)

# Flow rule: personal data must not leave by external email in the same plan (external as
# the step's own decision judges it: by its recipients, or the agent's flag). One message
# however many steps match.
plan_out["deny"] := m if {
	_cats.communication
	some c in cfg.personal_data_categories
	_cats[c]
	steps := input.steps
	some t in steps
	t.category == "communication"
	_external_message(t.params)
	m := ["a plan that reads personal data must not also send external email"]
}

# One risk adjustment however many payments exceed the limit, one by one or together.
plan_out["adjustments"] := a if {
	_over_limit
	a := [{
		"axis": "risk",
		"delta": cfg.payment_over_limit_risk_delta,
		"reason": _over_limit_reason,
	}]
}

_over_limit_reason := r if {
	_payment_over_limit == "one"
	r := sprintf("a payment exceeds auto_payment_max %v", [cfg.auto_payment_max])
} else := r if {
	r := sprintf("the plan's payments total %v, over auto_payment_max %v", [_payments_total, cfg.auto_payment_max])
}

# Auto-executed purchase orders are sampled for post-hoc review.
plan_out["review_sample_rate"] := r if {
	_cats.purchase
	steps := input.steps
	some s in steps
	s.category == "purchase"
	_within(s.amount, cfg.po_auto_max)
	r := cfg.review_sample_rate
}
