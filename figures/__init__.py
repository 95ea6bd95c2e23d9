"""Plotting only: functions take arrays/records and return matplotlib figures."""
