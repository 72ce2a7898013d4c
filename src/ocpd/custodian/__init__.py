"""The recovery custodian (OCP §8.3, D9): it keeps agents' key shares."""
