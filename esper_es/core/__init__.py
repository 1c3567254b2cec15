"""The pure core: lifecycle, events, commands and the decider. No torch, no SQLite, no I/O."""
