"""HTTP routers: parse, check access, call one service function, return a schema."""
