"""Processes kaizen starts or watches: local servers and their auth, the watchdog, crashed runs, progress."""
