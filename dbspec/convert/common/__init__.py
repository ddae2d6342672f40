"""Helpers every converter shares: argv parsing, the Conversion record, spec emission, epochs,
launchers, paths, reports."""
