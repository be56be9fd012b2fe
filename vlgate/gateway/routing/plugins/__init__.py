"""The balancer's policy as plug-ins: filters, weighted scorers, a picker, and the profile that names them."""
