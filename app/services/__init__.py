"""Business logic between the routers and the store; services flush, never commit."""
