# Tests of the default policy. Run them with `proctor policy test` (or
# proctor.policy.run_policy_tests); they are not compiled into the engine.
#
# rego-cpp crashes on `with input as {...}` when the rule under test refers to other rules,
# so these tests replace single fields (`with input.steps as ...`) through `decide`.
package proctor_test

import rego.v1

base := {"risk": 2, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}

high := {"risk": 5, "auditability": 4, "ux": 4, "recovery": 2, "cost": 1}

decide(steps, baseline, context) := d if {
	d := data.proctor.decision with input.steps as steps
		with input.baseline as baseline
		with input.context as context
}

one(step) := decide([object.union({"id": "s1", "params": {}}, step)], base, {})

# The policy leaves out step fields that have their contract default (docs/policy.md):
# full(d) puts the defaults back, so the tests read every field as the gateway does.
full(d) := object.union(
	{
		"approvals": _default_approvals(d.outcome),
		"approver_roles": [],
		"dry_run": false,
		"step_up": false,
		"undo_window": 0,
		"rollback_ttl": 0,
	},
	d,
)

_default_approvals("approve") := 1

_default_approvals(outcome) := 0 if outcome != "approve"

# The plan part with its defaults put back.
plan_of(d) := object.union({"deny": [], "adjustments": [], "review_sample_rate": 0}, d.plan)

# A step decision (with its defaults put back) has every field with the right type.
defaults(d) if {
	is_string(d.outcome)
	count(d.reasons) > 0
	is_number(d.approvals)
	is_array(d.approver_roles)
	is_boolean(d.dry_run)
	is_boolean(d.step_up)
	is_number(d.undo_window)
	d.rollback_ttl == 0
}

test_read_executes if {
	d := one({"category": "read"})
	s := full(d.steps.s1)
	s.outcome == "execute"
	s.reasons == ["read-only look-up"]
	s.approvals == 0
	defaults(s)
	plan_of(d) == {"deny": [], "adjustments": [], "review_sample_rate": 0}
}

test_only_fields_that_differ_from_the_defaults if {
	d := decide(
		[
			{"id": "r", "category": "read", "params": {}},
			{"id": "p", "category": "payment", "amount": 180000, "params": {}},
		],
		base, {},
	)
	d.steps.r == {"outcome": "execute", "reasons": ["read-only look-up"]}
	object.keys(d.steps.p) == {"outcome", "reasons", "approver_roles", "step_up"}
	object.keys(d.plan) == {"adjustments"}
	one({"category": "read"}).plan == {}
}

test_general_executes if {
	d := one({"category": "general"})
	d.steps.s1.outcome == "execute"
	defaults(full(d.steps.s1))
}

test_booking_executes_with_undo_window if {
	d := one({"category": "booking"})
	d.steps.s1.outcome == "execute"
	d.steps.s1.undo_window == 900
}

test_payment_within_limit_executes if {
	d := one({"category": "payment", "amount": 50000, "reversible": true})
	d.steps.s1.outcome == "execute"
	d.steps.s1.undo_window == 900
	plan_of(d).adjustments == []
}

test_irreversible_payment_has_no_undo_window if {
	d := one({"category": "payment", "amount": 100, "reversible": false})
	d.steps.s1.outcome == "execute"
	full(d.steps.s1).undo_window == 0
}

test_payment_without_reversible_executes_without_undo_window if {
	d := one({"category": "payment", "amount": 100})
	d.steps.s1.outcome == "execute"
	full(d.steps.s1).undo_window == 0
}

test_payment_over_limit_needs_finance_with_step_up if {
	d := one({"category": "payment", "amount": 180000, "reversible": true})
	s := full(d.steps.s1)
	s.outcome == "approve"
	s.approvals == 1
	s.approver_roles == ["finance"]
	s.step_up == true
	s.reasons == ["payment of 180000 exceeds auto_payment_max 50000"]
	d.plan.adjustments == [{"axis": "risk", "delta": 1, "reason": "a payment exceeds auto_payment_max 50000"}]
}

test_one_adjustment_however_many_payments_exceed if {
	d := decide(
		[
			{"id": "a", "category": "payment", "amount": 60000, "params": {}},
			{"id": "b", "category": "payment", "amount": 70000, "params": {}},
		],
		base, {},
	)
	count(d.plan.adjustments) == 1
}

test_payment_without_numeric_amount_needs_approval if {
	d := one({"category": "payment", "amount": "lots"})
	d.steps.s1.outcome == "approve"
}

test_payment_limit_is_a_setting if {
	d := one({"category": "payment", "amount": 100}) with data.proctor.settings.auto_payment_max as 50
	d.steps.s1.outcome == "approve"
}

pay(id, amount) := {"id": id, "category": "payment", "amount": amount, "reversible": true, "params": {"currency": "EUR"}}

# Splitting a payment into steps within the limit routes the plan as one payment of the total.
test_payments_split_within_a_plan_route_as_their_total if {
	d := decide([pay("a", 30000), pay("b", 30000)], base, {})
	every id in ["a", "b"] {
		s := full(d.steps[id])
		s.outcome == "approve"
		s.approvals == 1
		s.approver_roles == ["finance"]
		s.step_up == true
		s.undo_window == 0
		s.reasons == [
			"payment of 30000 is within auto_payment_max 50000",
			"the plan's payments total 60000, over auto_payment_max 50000: together they need the approval one payment of that total would",
		]
	}
	d.plan.adjustments == [{"axis": "risk", "delta": 1, "reason": "the plan's payments total 60000, over auto_payment_max 50000"}]
}

test_payments_within_the_limit_together_execute if {
	d := decide([pay("a", 25000), pay("b", 25000), {"id": "r", "category": "read", "params": {}}], base, {})
	d.steps.a == {"outcome": "execute", "reasons": ["payment of 25000 is within auto_payment_max 50000"], "undo_window": 900}
	d.steps.b.outcome == "execute"
	plan_of(d).adjustments == []
}

test_a_payment_over_the_limit_keeps_its_own_reason_beside_a_split_one if {
	d := decide([pay("a", 10000), pay("b", 60000)], base, {})
	d.steps.a.reasons[1] == "the plan's payments total 70000, over auto_payment_max 50000: together they need the approval one payment of that total would"
	d.steps.b.reasons == ["payment of 60000 exceeds auto_payment_max 50000"]
	d.plan.adjustments[0].reason == "a payment exceeds auto_payment_max 50000"
}

# One limit for every currency, as for a single payment: no splitting across currencies.
test_payments_in_several_currencies_count_towards_one_total if {
	usd := object.union(pay("b", 30000), {"params": {"currency": "USD"}})
	d := decide([pay("a", 30000), usd], base, {})
	d.steps.a.outcome == "approve"
	d.steps.b.outcome == "approve"
}

# A negative amount (a credit) does not offset the other payments.
test_a_negative_payment_does_not_lower_the_total if {
	d := decide([pay("a", 40000), pay("b", 40000), pay("c", -80000)], base, {})
	d.steps.a.outcome == "approve"
	d.steps.b.outcome == "approve"
}

test_the_total_is_checked_against_the_limit_setting if {
	d := decide([pay("a", 30000), pay("b", 30000)], base, {}) with data.proctor.settings.auto_payment_max as 60000
	d.steps.a.outcome == "execute"
}

test_subscription_needs_confirmation if {
	d := one({"category": "subscription"})
	s := full(d.steps.s1)
	s.outcome == "confirm"
	s.reasons == ["changes a customer's payment or subscription: the customer confirms"]
	s.approvals == 0
}

test_small_purchase_executes_and_is_sampled if {
	d := one({"category": "purchase", "amount": 100000})
	d.steps.s1.outcome == "execute"
	d.plan.review_sample_rate == 0.1
}

test_large_purchase_needs_finance if {
	d := one({"category": "purchase", "amount": 100001})
	d.steps.s1.outcome == "approve"
	d.steps.s1.approver_roles == ["finance"]
	plan_of(d).review_sample_rate == 0
}

test_one_review_rate_however_many_orders_are_sampled if {
	d := decide(
		[
			{"id": "a", "category": "purchase", "amount": 10, "params": {}},
			{"id": "b", "category": "purchase", "amount": 20, "params": {}},
		],
		base, {},
	)
	d.plan.review_sample_rate == 0.1
}

test_high_risk_categories_need_their_group if {
	every category, group in {
		"financial": "finance", "pii": "hr", "health": "privacy",
		"iam": "security", "legal": "legal", "production": "sre",
	} {
		s := full(one({"category": category}).steps.s1)
		s.outcome == "approve"
		s.approvals == 1
		s.approver_roles == [group]
		defaults(s)
	}
}

test_production_runs_a_dry_run_first if {
	d := one({"category": "production", "params": {"environment": "prod"}})
	d.steps.s1.outcome == "approve"
	d.steps.s1.dry_run == true
}

test_staging_executes_after_a_dry_run if {
	d := one({"category": "production", "params": {"environment": "staging"}})
	d.steps.s1.outcome == "execute"
	d.steps.s1.dry_run == true
}

test_internal_message_executes if {
	d := one({"category": "communication", "params": {"to": "bob@example.com", "external": false}})
	d.steps.s1 == {"outcome": "execute", "reasons": ["internal message: every recipient is at an internal domain"]}
}

test_external_message_needs_confirmation if {
	d := one({"category": "communication", "params": {"to": "ada@example.org", "external": true}})
	d.steps.s1 == {"outcome": "confirm", "reasons": ["external message sent on the user's behalf: the user confirms"]}
}

mail(params) := one({"category": "communication", "params": params}).steps.s1

outside := "message to a recipient outside internal_domains (or to none named): the user confirms"

# The recipient decides, not the agent's flag: left out or false, mail outside is external.
test_a_recipient_outside_makes_a_message_external_whatever_the_flag if {
	mail({"to": "attacker@evil.example"}) == {"outcome": "confirm", "reasons": [outside]}
	mail({"to": "attacker@evil.example", "external": false}).outcome == "confirm"
}

# The flag may only make a message stricter.
test_the_flag_makes_an_internal_message_external if {
	mail({"to": "bob@example.com", "external": true}).outcome == "confirm"
}

test_internal_domains_compare_without_case if {
	mail({"to": "Bob@Example.COM"}).outcome == "execute"
}

test_every_recipient_must_be_internal if {
	mail({"to": ["bob@example.com", "carol@example.com"], "cc": "dan@example.com"}).outcome == "execute"
	mail({"to": ["bob@example.com", "eve@evil.example"]}).outcome == "confirm"
	mail({"to": "bob@example.com", "cc": ["eve@evil.example"]}).outcome == "confirm"
	mail({"to": "bob@example.com", "bcc": "eve@evil.example"}).outcome == "confirm"
}

# Only a plain single address at an internal domain counts as internal: fail closed.
test_an_address_that_is_not_plain_is_external if {
	every to in [
		"bob@example.com,eve@evil.example",
		"eve@evil.example, bob@example.com",
		"Bob <bob@example.com>",
		"bob@example.com ",
		"eve@evil.example@example.com",
		"bob@mail.example.com",
		"bob@example.com.evil.example",
	] {
		mail({"to": to}).outcome == "confirm"
	}
}

test_a_message_without_a_readable_recipient_is_external if {
	mail({}).outcome == "confirm"
	mail({"to": []}).outcome == "confirm"
	mail({"to": 5}).outcome == "confirm"
	mail({"to": "bob@example.com", "cc": 5}).outcome == "confirm"
	mail({"to": "bob@example.com", "cc": {"x": "bob@example.com"}}).outcome == "confirm"
	mail({"to": ["bob@example.com", null]}).outcome == "confirm"
}

test_internal_domains_is_a_setting if {
	d := one({"category": "communication", "params": {"to": "bob@corp.example"}}) with data.proctor.settings.internal_domains as ["corp.example"]
	d.steps.s1.outcome == "execute"
	e := one({"category": "communication", "params": {"to": "bob@example.com"}}) with data.proctor.settings.internal_domains as []
	e.steps.s1.outcome == "confirm"
}

test_unknown_category_is_denied if {
	d := one({"category": "teleport"})
	d.steps.s1.outcome == "deny"
	d.steps.s1.reasons == ["unknown category teleport: fail closed"]
}

test_missing_category_is_denied if {
	d := decide([{"id": "s1", "params": {}}], base, {})
	d.steps.s1.outcome == "deny"
}

test_personal_data_and_external_email_deny_the_plan if {
	d := decide(
		[
			{"id": "s1", "category": "pii", "params": {}},
			{"id": "s2", "category": "communication", "params": {"external": true}},
		],
		base, {},
	)
	d.plan.deny == ["a plan that reads personal data must not also send external email"]
}

test_one_flow_denial_however_many_steps_match if {
	d := decide(
		[
			{"id": "s1", "category": "pii", "params": {}},
			{"id": "s2", "category": "health", "params": {}},
			{"id": "s3", "category": "communication", "params": {"external": true}},
			{"id": "s4", "category": "communication", "params": {"external": true}},
		],
		base, {},
	)
	d.plan.deny == ["a plan that reads personal data must not also send external email"]
}

test_personal_data_and_internal_email_are_allowed if {
	d := decide(
		[
			{"id": "s1", "category": "health", "params": {}},
			{"id": "s2", "category": "communication", "params": {"to": "bob@example.com", "external": false}},
		],
		base, {},
	)
	plan_of(d).deny == []
}

# The flow rule judges externality as the step does: leaving the flag out does not dodge it.
test_personal_data_and_mail_outside_deny_the_plan_without_the_flag if {
	every params in [{"to": "attacker@evil.example"}, {"to": "attacker@evil.example", "external": false}, {}] {
		d := decide(
			[
				{"id": "s1", "category": "pii", "params": {}},
				{"id": "s2", "category": "communication", "params": params},
			],
			base, {},
		)
		d.plan.deny == ["a plan that reads personal data must not also send external email"]
	}
}

test_orchestrator_guard_turns_execute_into_supervisor_approval if {
	# 5 + 4 + 4 + 2 + 1 = 16 > 15
	d := decide([{"id": "s1", "category": "read", "params": {}}], high, {})
	s := full(d.steps.s1)
	s.outcome == "approve"
	s.approver_roles == ["supervisor"]
	s.approvals == 1
	s.reasons[1] == "adjusted total 16 exceeds hybrid_max 15: orchestrator-first, approval by supervisor"
}

test_orchestrator_guard_keeps_approvals_and_denials if {
	d := decide(
		[
			{"id": "s1", "category": "iam", "params": {}},
			{"id": "s2", "category": "teleport", "params": {}},
		],
		high, {},
	)
	d.steps.s1.approver_roles == ["security"]
	d.steps.s2.outcome == "deny"
}

test_hybrid_max_comes_from_the_context if {
	d := decide([{"id": "s1", "category": "read", "params": {}}], high, {"thresholds": {"hybrid_max": 16}})
	d.steps.s1.outcome == "execute"
}

test_adjustment_counts_towards_the_guard if {
	# 4 + 3 + 4 + 2 + 1 = 14, + 1 for the payment = 15: still hybrid; hybrid_max 14 tips it
	baseline := {"risk": 4, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}
	steps := [
		{"id": "s1", "category": "booking", "params": {}},
		{"id": "s2", "category": "payment", "amount": 90000, "params": {}},
	]
	decide(steps, baseline, {}).steps.s1.outcome == "execute"
	decide(steps, baseline, {"thresholds": {"hybrid_max": 14}}).steps.s1.outcome == "approve"
}

test_adjusted_axis_is_clamped if {
	# risk 5 + 1 is clamped to 5: 5 + 3 + 4 + 2 + 1 = 15, not 16
	baseline := {"risk": 5, "auditability": 3, "ux": 4, "recovery": 2, "cost": 1}
	steps := [
		{"id": "s1", "category": "booking", "params": {}},
		{"id": "s2", "category": "payment", "amount": 90000, "params": {}},
	]
	decide(steps, baseline, {}).steps.s1.outcome == "execute"
}

test_every_step_gets_one_decision if {
	d := decide(
		[
			{"id": "a", "category": "read", "params": {}},
			{"id": "b", "category": "payment", "amount": 10, "params": {}},
			{"id": "c", "category": "nope", "params": {}},
		],
		base, {},
	)
	count(d.steps) == 3
}

test_baseline_total_replaces_the_sum_of_the_axes if {
	d := data.proctor.decision with input.steps as [{"id": "s1", "category": "read", "params": {}}]
		with input.baseline as base
		with input.baseline_total as 16
		with input.context as {}
	d.steps.s1.outcome == "approve"
}

test_missing_baseline_leaves_the_decision_undefined if {
	not decide([{"id": "s1", "category": "read", "params": {}}], {"risk": 1}, {})
}

# --- guards (input.guards, docs/guards.md) -----------------------------------------------------

# NOTE(policy): a `with` value must be a local variable or a literal: rego-cpp leaves the
# decision undefined when it is a rule reference such as `base`.
guarded(steps, guards) := d if {
	b := base
	d := data.proctor.decision with input.steps as steps
		with input.baseline as b
		with input.context as {}
		with input.plan as {"agent_id": "bot", "on_behalf_of": "alice"}
		with input.guards as guards
}

buy(id, amount) := {"id": id, "category": "general", "action": "shop.buy", "amount": amount, "params": {}}

read_step(id) := {"id": id, "category": "read", "action": "shop.read", "amount": 0, "params": {}}

test_guards_with_nothing_engaged_change_nothing if {
	d := guarded([buy("s1", 10), read_step("s2")], {"whitelisted": true})
	d.steps.s1 == {"outcome": "execute", "reasons": ["low-impact action with no external commitment"]}
	d.steps.s2 == {"outcome": "execute", "reasons": ["read-only look-up"]}
}

test_a_kill_switch_denies_every_step if {
	d := guarded([buy("s1", 10), read_step("s2")], {"kill": ["global", "agent:bot"]})
	d.steps.s1.outcome == "deny"
	d.steps.s2.outcome == "deny"
	"kill switch agent:bot is engaged" in d.steps.s2.reasons
	"kill switch global is engaged" in d.steps.s1.reasons
}

test_outside_the_whitelist_is_denied if {
	d := guarded([buy("s1", 10)], {"whitelisted": false})
	d.steps.s1.outcome == "deny"
	"an action of the plan is outside the agent's whitelist" in d.steps.s1.reasons
}

test_an_open_breaker_turns_execute_into_approve if {
	d := guarded([buy("s1", 10), read_step("s2")], {"breakers": {"action:shop.buy": "open"}})
	d.steps.s1.outcome == "approve"
	d.steps.s1.approver_roles == ["supervisor"]
	"circuit breaker action:shop.buy is open: agentic execution is off" in d.steps.s1.reasons
	d.steps.s2.outcome == "execute"
	a := guarded([read_step("s2")], {"breakers": {"agent:bot": "open"}})
	a.steps.s2.outcome == "approve"
}

test_a_half_open_breaker_lets_its_trials_through if {
	d := guarded([buy("s1", 10)], {"breakers": {"agent:bot": "half_open"}})
	d.steps.s1.outcome == "execute"
}

test_guards_never_relax if {
	pay := {"id": "s1", "category": "payment", "action": "pay", "amount": 900000, "params": {}}
	d := guarded([pay], {"breakers": {"agent:bot": "open"}, "autonomy": {"s1": {"level": "auto"}}})
	d.steps.s1.outcome == "approve"
	d.steps.s1.approver_roles == ["finance"]
	d.steps.s1.step_up == true
	ext := {"id": "s1", "category": "communication", "action": "mail", "amount": 0, "params": {"external": true}}
	guarded([ext], {"autonomy": {"s1": {"level": "auto"}}}).steps.s1.outcome == "confirm"
}

test_over_budget_routes_to_approval if {
	over := {
		"budget": "budget:agent:bot", "period": "2026-11-24", "limit": 1000, "spent": 900,
		"amount": 200, "on_exceed": "approve", "steps": ["s1"],
	}
	d := guarded([buy("s1", 200), read_step("s2")], {"over_budget": [over]})
	d.steps.s1.outcome == "approve"
	"budget budget:agent:bot (2026-11-24): 900 spent + 200 > 1000" in d.steps.s1.reasons
	d.steps.s2.outcome == "execute"
}

test_over_budget_denies_when_the_budget_or_the_setting_says_so if {
	over := {
		"budget": "budget:global:*", "period": "2026-11", "limit": 10, "spent": 0,
		"amount": 200, "on_exceed": "deny", "steps": ["s1"],
	}
	guarded([buy("s1", 200)], {"over_budget": [over]}).steps.s1.outcome == "deny"
	lax := object.union(over, {"on_exceed": "approve"})
	guarded([buy("s1", 200)], {"over_budget": [lax]}).steps.s1.outcome == "approve"
	strict := guarded([buy("s1", 200)], {"over_budget": [lax]}) with data.proctor.settings.budget_exceeded as "deny"
	strict.steps.s1.outcome == "deny"
}

test_autonomy_levels if {
	guarded([buy("s1", 10)], {"autonomy": {"s1": {"level": "propose"}}}).steps.s1.outcome == "confirm"
	c := guarded([buy("s1", 10)], {"autonomy": {"s1": {"level": "confirm"}}})
	c.steps.s1.outcome == "confirm"
	"the user's autonomy level is confirm: the user confirms" in c.steps.s1.reasons
	guarded([buy("s1", 10)], {"autonomy": {"s1": {"level": "auto"}}}).steps.s1.outcome == "execute"
}

test_auto_below_a_tolerance if {
	tol := {"autonomy": {"s1": {"level": "auto", "below": 5000}}}
	guarded([buy("s1", 4999)], tol).steps.s1.outcome == "execute"
	at := guarded([buy("s1", 5000)], tol)
	at.steps.s1.outcome == "confirm"
	"the user's autonomy level is auto below 5000: the user confirms" in at.steps.s1.reasons
	# An amount that is not a number cannot be shown to be below the tolerance.
	guarded([buy("s1", "lots")], tol).steps.s1.outcome == "confirm"
}

test_an_unreadable_autonomy_level_needs_a_confirmation if {
	guarded([buy("s1", 10)], {"autonomy": {"s1": {"level": "sometimes"}}}).steps.s1.outcome == "confirm"
	guarded([buy("s1", 10)], {"autonomy": {"s1": {}}}).steps.s1.outcome == "confirm"
}
