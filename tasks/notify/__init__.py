"""Telling the world: every event name, alerts for people, new data announcing itself."""
