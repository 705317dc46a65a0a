# delayed_types.py is for the type checker: importing it (as --doctest-modules would) would run it.
collect_ignore = ["delayed_types.py"]
