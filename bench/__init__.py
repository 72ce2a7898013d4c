"""Microbenchmarks of ocpd (``make bench``); see ``bench/README.md``.

Not tests: a benchmark reports numbers and flags steps above their targets,
but never fails a build.
"""
