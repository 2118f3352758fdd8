"""Contract test suites that every storage (and later backend) must pass.

Subclass a suite in a test module and provide the ``storage`` fixture.
"""
