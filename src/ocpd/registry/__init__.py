"""The registry component: agent directory, trust ledger, federation, seed directory."""
