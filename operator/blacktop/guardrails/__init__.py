"""The guardrail engine: pure deciders over GuardrailPolicies (CEL), team boundaries and plans.

Nothing here does I/O: callers (the admission handlers, the plan stage of the ServiceRequest
controller, the GuardrailPolicy controller) gather the objects, this package decides.
"""
