"""The sans-I/O protocol core of ocpd.

Pure functions and value classes: canonical encodings, the crypto suite,
identifiers, signed artifacts, envelopes and the schema gate. Nothing in this
package imports trio, sockets, SQLite or a web framework, and nothing reads a
clock: callers pass ``now`` (seconds since the Unix epoch) where time matters.
"""
