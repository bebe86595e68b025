"""`make demo`: synthetic data (data), the stages as subprocesses of the three CLIs (stages), the results
table and figures (report), and the driver that runs them in order (driver)."""
