"""The teaching demo: its scenarios, its fake upstream and its tunes."""
