"""Developer tools: tiny random models for tests and benchmarks, and the key conversions they need."""
