"""What one run asked for: its definite set of task ids, and when it is finished or broken."""
