"""The pure core: config values, the immutable snapshot, the resolver, decision tokens.

No I/O, no clock, no imports of our own beyond the contract (`modelroute.v1`,
`modelroute.config.v1`); tests/test_architecture.py checks the rule.
"""
