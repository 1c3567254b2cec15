"""The `esper-es` command line (SPEC §8)."""
