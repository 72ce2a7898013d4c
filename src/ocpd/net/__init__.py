"""Node networking (NET): advertisements, peer sessions, bootstrap and traces."""
