"""Stand-in for pip (tests only): `python -m pip` records its arguments instead of installing."""
