"""Public layer functions: validate arguments, choose the algorithm and ISA level, take the
compiled kernel from the registry and run it. No numerics live here."""
