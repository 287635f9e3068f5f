"""kaizen's steps, in wings by concept (README: Code). A wing imports only the wings below it."""
