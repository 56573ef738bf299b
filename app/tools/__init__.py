"""Tools the loop can call, and the guards around them."""
