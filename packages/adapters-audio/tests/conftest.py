pytest_plugins = ["adapters.testing.conformance"]
