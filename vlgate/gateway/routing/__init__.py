"""Which backend takes a request: the balancer and its policy (pure, no I/O)."""
