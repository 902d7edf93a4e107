"""REST face: A1111-compatible ``/sdapi/v1`` schemas and conversions; no business logic."""
