"""The workspace: typed settings, the one layout, git + DVC, databases, files and locks, environments.

The lowest wing: it imports no other."""
