"""`python -m chaos` (`make chaos`): the pipeline on a private stack, under faults, checked Jepsen-style."""
