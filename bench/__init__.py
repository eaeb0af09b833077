"""The benchmark harness behind `invoke bench` (not part of the library)."""
